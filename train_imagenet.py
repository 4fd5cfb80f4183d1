"""iTAML on ImageNet-100 (10 tasks of 10 classes) or ImageNet-1K: `python3 train_imagenet.py [start_task]`.

ImageNet-100 is the first 100 classes of a class order shuffled with `seed`; the run writes them to
<checkpoint>/classes.txt, and another run reuses exactly that subset with class_order = <that file>.
ImageNet-1K: num_class = 1000, class_per_task = 100, memory = 20000. The release had no ImageNet script;
the settings follow its CIFAR-100 and MS-Celeb ones. The paper reports 89.8% (ImageNet-100) and
63.2% (ImageNet-1K) after the last task.
"""
from utils.run.session import main


class args:
    dataset = "imagenet"                # ILSVRC-2012 in class folders (torchvision ImageFolder)
    checkpoint = "results/imagenet/test1"  # session JSONs, summary.csv, class list, log
    savepoint = "models/" + "/".join(checkpoint.split("/")[1:])  # models and replay memories
    data_path = "../Datasets/ImageNet/"  # folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG

    num_class = 100                     # classes in the run: 100 (ImageNet-100) or 1000 (ImageNet-1K)
    class_per_task = 10                 # classes a task (100 for ImageNet-1K)
    num_task = 10                       # tasks (num_task * class_per_task == num_class)
    class_order = "shuffled"            # "natural", "shuffled" (seeded by `seed`) or a classes.txt path
    seed = 1993                         # seeds the class order (so the 100-class subset), memory, init

    memory = 2000                       # exemplars kept in total (20000 for ImageNet-1K)
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
    train_batch = 256                   # mini-batch of Alg. 1 (new task and memory shuffled)
    test_batch = 256                    # evaluation batch
    num_workers = 8                     # DataLoader workers (JPEG decoding is the bottleneck)

    continuum = 20                      # test samples a continuum shares (the paper's p)
    adapt_lr = 1e-3                     # "single update": Adam learning rate (release)
    adapt_epochs = 1                    # "single update": epochs over the task's exemplars
    adapt_batch = 64                    # "single update": batch size (release)
    adapt_bn = "release"                # BatchNorm statistics after the update: as left (release) or "reestimate"
    device = "auto"                     # "auto" (GPU if visible), "cpu" or "cuda[:N]"
    augmentation = "release"            # the release's pipeline and statistics; "corrected": ours
    image_size = None                   # None: the pipeline's crop (release 112 px, corrected 224)
    channels_last = True                # convolutions in channels-last memory layout (faster)
    amp = False                         # bf16 autocast of forward passes (GPU only)
    compile = False                     # torch.compile the inner loop's forward (GPU only)
    gpu_data = False                    # only for data sets held in memory (mnist, cifar100, …)
    batched_tasks = False               # all tasks' first inner step in one pass (GPU, paper variant)


if __name__ == "__main__":
    main(args)
