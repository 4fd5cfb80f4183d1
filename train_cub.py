"""iTAML on CUB-200-2011, 10 tasks of 20 bird species: `python3 train_cub.py [start_task]`.

The paper reports no CUB number; the settings follow the release's ImageNet-scale ones with a smaller
batch, since CUB has about 30 training images a class.
"""
from utils.run.session import main


class args:
    dataset = "cub200"                  # CUB-200-2011 in its standard layout (images.txt, …, images/)
    checkpoint = "results/cub200/test1"  # session JSONs, summary.csv, class list, log
    savepoint = "models/" + "/".join(checkpoint.split("/")[1:])  # models and replay memories
    data_path = "../Datasets/CUB_200_2011/"  # the extracted archive (or the folder holding it)

    num_class = 200                     # species in the run
    class_per_task = 20                 # species a task
    num_task = 10                       # tasks (num_task * class_per_task == num_class)
    class_order = "natural"             # "natural" (0, 1, …), "shuffled", "seed1993" or a classes.txt
    seed = 0                            # seeds the class order, memory, loaders and init

    memory = 2000                       # exemplars kept in total, 10 a species at the end
    selection = "first"                 # exemplars: "first" m of each class (release), "random" (seeded), "herding" (iCaRL)

    method = "itaml"                    # "itaml"; the baselines: "er", "finetune", "joint"
    er_loss = "ce"                      # the baselines' loss: "ce" over seen classes, or "task_bce"
    variant = "official"                # the release's training, which made the paper's numbers;
                                        # "paper": Alg. 1 as printed (docs/release.md)
    task_start = None                   # None: the variant's; "base" (paper) or "previous" (release)
    meta_target = None                  # None: the variant's; "mean" (paper) or "last" (release)
    task_optimizer = None               # None: the variant's; "per_task" (paper) or "shared" (release)
    batch_forward = None                # None: the variant's; False (paper) or True (release)
    beta = 1.0                          # η = exp(−beta·t/num_task), t the 0-based session (release)
    r = 1                               # inner-loop optimizer steps per task and mini-batch
    r_newest = None                     # steps of the session's newest task; None: r

    optimizer = "radam"                 # "sgd", "adam" or "radam" (release: RAdam)
    lr = 0.01                           # learning rate of the inner loop (release)
    momentum = 0.9                      # SGD momentum (ignored by radam)
    weight_decay = 0.0                  # L2 penalty of the optimizer
    epochs = 70                         # epochs a session
    schedule = [20, 40, 60]             # epochs at which the learning rate is multiplied by gamma
    gamma = 0.2                         # learning-rate decay factor (release)
    model_selection = "last"            # "last" epoch's model; "release": best late epoch on the test set
    sessions = {}                       # {session: {field: value}}: one session's own settings
    train_batch = 64                    # mini-batch of Alg. 1 (new task and memory shuffled)
    test_batch = 64                     # evaluation batch
    num_workers = 8                     # DataLoader workers (JPEG decoding is the bottleneck)

    continuum = 20                      # test samples a continuum shares (the paper's p)
    adapt_lr = 1e-3                     # "single update": Adam learning rate (release)
    adapt_epochs = 1                    # "single update": epochs over the task's exemplars
    adapt_batch = 64                    # "single update": batch size (release)
    adapt_bn = "release"                # BatchNorm statistics after the update: as left (release) or "reestimate"
    device = "auto"                     # "auto" (GPU if visible), "cpu" or "cuda[:N]"
    augmentation = "release"            # "release": the release's CUB pipeline; "corrected": ours
    image_size = None                   # None: 224-px crops (ResNet-18's stem adapts to any size)
    channels_last = True                # convolutions in channels-last memory layout (faster)
    amp = False                         # bf16 autocast of forward passes (GPU only)
    compile = False                     # torch.compile the inner loop's forward (GPU only)
    gpu_data = False                    # only for data sets held in memory (mnist, cifar100, …)
    batched_tasks = False               # all tasks' first inner step in one pass (GPU, paper variant)


if __name__ == "__main__":
    main(args)
