"""iTAML on MNIST, 5 tasks of 2 digits (the paper's setting): `python3 train_mnist.py [start_task]`."""
from utils.run.session import main


class args:
    dataset = "mnist"                   # torchvision MNIST, downloaded into data_path when missing
    checkpoint = "results/mnist/test1"  # session JSONs, summary.csv, class order, log
    savepoint = "models/" + "/".join(checkpoint.split("/")[1:])  # models and replay memories
    data_path = "../Datasets/MNIST/"    # folder holding MNIST/raw/ (the release's layout)

    num_class = 10                      # classes in the run
    class_per_task = 2                  # classes a task
    num_task = 5                        # tasks (num_task * class_per_task == num_class)
    class_order = "natural"             # "natural" (0, 1, …) or "shuffled" (seeded by `seed`)
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
    beta = 0.5                          # η = exp(−beta·t/num_task), t the 0-based session (release)
    r = 1                               # inner-loop optimizer steps per task and mini-batch
    r_newest = None                     # steps of the session's newest task; None: r

    optimizer = "sgd"                   # "sgd", "adam" or "radam" (release: SGD for MNIST)
    lr = 0.1                            # learning rate of the inner loop (release)
    momentum = 0.9                      # SGD momentum (release; ignored by adam and radam)
    weight_decay = 1e-3                 # L2 penalty of the optimizer (release)
    epochs = 20                         # epochs a session
    schedule = [5, 10, 15]              # epochs at which the learning rate is multiplied by gamma
    gamma = 0.5                         # learning-rate decay factor (release)
    model_selection = "last"            # "last" epoch's model; "release": best late epoch on the test set
    # one session's own settings; the release: 5 epochs in session 0, lr 0.05 in session 4
    sessions = {0: {"epochs": 5}, 4: {"lr": 0.05}}
    train_batch = 256                   # mini-batch of Alg. 1 (new task and memory shuffled)
    test_batch = 256                    # evaluation batch
    num_workers = 0                     # DataLoader workers (0: MNIST is held in memory)

    continuum = 20                      # test samples a continuum shares (the paper's p)
    adapt_lr = 1e-3                     # "single update": Adam learning rate (release)
    adapt_epochs = 1                    # "single update": epochs over the task's exemplars
    adapt_batch = 64                    # "single update": batch size (release)
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
