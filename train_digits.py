"""iTAML on scikit-learn's bundled 8×8 digits: the offline demo (`python3 train_digits.py 0`).

Unlike the paper's scripts, the demo runs Alg. 1 as printed (`variant = "paper"`): it is there to show
the method step by step. On these digits it also ends higher than the release's training (docs/data.md,
"The digits demo: its memory and its variant": five seeds of each).
"""
from utils.run.session import main


class args:
    dataset = "digits"                  # scikit-learn's digits, shipped with the package: no download
    checkpoint = "results/digits/demo"  # session JSONs, summary.csv, class order, log
    savepoint = "models/" + "/".join(checkpoint.split("/")[1:])  # models and replay memories
    data_path = ""                      # unused for digits (the data ship with scikit-learn)

    num_class = 10                      # classes in the run
    class_per_task = 2                  # classes a task
    num_task = 5                        # tasks (num_task * class_per_task == num_class)
    class_order = "natural"             # "natural" (0, 1, …) or "shuffled" (seeded by `seed`)
    seed = 0                            # seeds the split, class order, memory, loaders and init

    memory = 400                        # exemplars kept in total, split equally over seen classes
    selection = "random"                # exemplars: "random" (seeded), "herding" (iCaRL), "first" (release)

    method = "itaml"                    # "itaml"; the baselines: "er", "finetune", "joint"
    er_loss = "ce"                      # the baselines' loss: "ce" over seen classes, or "task_bce"
    variant = "paper"                   # Alg. 1 as printed; "official": the release's training
    task_start = None                   # None: the variant's; "base" (paper) or "previous" (release)
    meta_target = None                  # None: the variant's; "mean" (paper) or "last" (release)
    task_optimizer = None               # None: the variant's; "per_task" (paper) or "shared" (release)
    batch_forward = None                # None: the variant's; False (paper) or True (release)
    beta = 0.5                          # η = exp(−beta·t/num_task), t the 0-based session
    r = 1                               # inner-loop optimizer steps per task and mini-batch
    r_newest = None                     # steps of the session's newest task; None: r

    optimizer = "sgd"                   # "sgd", "adam" or "radam"
    lr = 0.1                            # learning rate of the inner loop
    momentum = 0.9                      # SGD momentum (ignored by adam and radam)
    weight_decay = 1e-3                 # L2 penalty of the optimizer
    epochs = 10                         # epochs a session
    schedule = [4, 8]                   # epochs at which the learning rate is multiplied by gamma
    gamma = 0.5                         # learning-rate decay factor
    model_selection = "last"            # "last" epoch's model; "release": best late epoch on the test set
    sessions = {}                       # {session: {field: value}}: one session's own settings
    train_batch = 64                    # mini-batch of Alg. 1 (new task and memory shuffled)
    test_batch = 256                    # evaluation batch
    num_workers = 0                     # DataLoader workers (0: the data are in memory already)

    continuum = 20                      # test samples a continuum shares (the paper's p)
    adapt_lr = 1e-3                     # "single update": Adam learning rate
    adapt_epochs = 1                    # "single update": epochs over the task's exemplars
    adapt_batch = 64                    # "single update": batch size
    adapt_bn = "release"                # BatchNorm statistics after the update: as left (release) or "reestimate"
    device = "auto"                     # "auto" (GPU if visible), "cpu" or "cuda[:N]"
    augmentation = "release"            # no augmentation either way: "release" or "corrected" alike
    image_size = None                   # fixed by the data set (only image-file data sets resize)
    channels_last = False               # no convolutions: nothing to lay out
    amp = False                         # bf16 autocast of forward passes (GPU only)
    compile = False                     # torch.compile the inner loop's forward (GPU only)
    gpu_data = False                    # hold the data set on the GPU and augment there (GPU only)
    batched_tasks = False               # all tasks' first inner step in one pass (GPU, paper variant)


if __name__ == "__main__":
    main(args)
