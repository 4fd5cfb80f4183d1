"""iTAML on SVHN, 5 tasks of 2 digits (the paper's setting): `python3 train_svhn.py [start_task]`.

As shipped, the release's training and augmentation: random crops, rotations and horizontal flips,
and ImageNet's statistics. A mirrored digit is another symbol: `augmentation = "corrected"` drops the
flip and normalises with SVHN's own statistics.
"""
from utils.run.session import main


class args:
    dataset = "svhn"                    # torchvision SVHN (train and test .mat), downloaded when missing
    checkpoint = "results/svhn/test1"   # session JSONs, summary.csv, class order, log
    savepoint = "models/" + "/".join(checkpoint.split("/")[1:])  # models and replay memories
    data_path = "../Datasets/SVHN/"     # folder holding train_32x32.mat and test_32x32.mat

    num_class = 10                      # classes in the run
    class_per_task = 2                  # classes a task
    num_task = 5                        # tasks (num_task * class_per_task == num_class)
    class_order = "natural"             # "natural" (0, 1, …), "shuffled", "seed1993" or a classes.txt
    seed = 0                            # seeds the class order, memory, loaders and init

    memory = 2000                       # exemplars kept in total, split equally over seen classes
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
    r = 1                               # inner-loop optimizer steps per task and mini-batch (release)
    r_newest = None                     # steps of the session's newest task; None: r

    optimizer = "radam"                 # "sgd", "adam" or "radam" (release: RAdam)
    lr = 0.01                           # learning rate of the inner loop (release)
    momentum = 0.9                      # SGD momentum (ignored by radam)
    weight_decay = 0.0                  # L2 penalty of the optimizer
    epochs = 20                         # epochs a session
    schedule = [5, 10, 15]              # epochs at which the learning rate is multiplied by gamma
    gamma = 0.2                         # learning-rate decay factor (release)
    model_selection = "last"            # "last" epoch's model; "release": best late epoch on the test set
    sessions = {4: {"r_newest": 4}}     # release: 4 steps for the newest task of session 4
    train_batch = 256                   # mini-batch of Alg. 1 (new task and memory shuffled)
    test_batch = 256                    # evaluation batch
    num_workers = 4                     # DataLoader workers (CPU decoding and augmentation)

    continuum = 20                      # test samples a continuum shares (the paper's p)
    adapt_lr = 1e-3                     # "single update": Adam learning rate (release)
    adapt_epochs = 1                    # "single update": epochs over the task's exemplars
    adapt_batch = 64                    # "single update": batch size (release)
    adapt_bn = "release"                # BatchNorm statistics after the update: as left (release) or "reestimate"
    device = "auto"                     # "auto" (GPU if visible), "cpu" or "cuda[:N]"
    augmentation = "release"            # the release's pipeline and statistics; "corrected": ours
    image_size = None                   # fixed 32×32 (only image-file data sets resize)
    channels_last = True                # convolutions in channels-last memory layout (faster)
    amp = False                         # bf16 autocast of forward passes (GPU only)
    compile = False                     # torch.compile the inner loop's forward (GPU only)
    gpu_data = False                    # hold the data set on the GPU and augment there (GPU only)
    batched_tasks = False               # all tasks' first inner step in one pass (GPU, paper variant)


if __name__ == "__main__":
    main(args)
