"""iTAML on scikit-learn's digits through the reduced ResNet-18: `python3 train_digits_cnn.py 0`.

The second offline demo. The MLP demo (`train_digits.py`) has no BatchNorm; the paper's networks for
SVHN and CIFAR-100 do, and so does their "single update" at test time, which trains a copy of the
network on a task's exemplars in train mode and so moves BatchNorm's running statistics with it.
This script puts real images through that network with no download: the same 8×8 digits, split and
classes as the MLP demo, upsampled to 32×32 and repeated over three channels (`digits32`), trained
as the release trained SVHN (its variant, RAdam, augmentation shape and single update), shortened so
that it ends in a few minutes on two CPU cores. It is where the single update's fragility is
measured: rerun it with `adapt_lr=…`, `adapt_epochs=…` or `adapt_bn=reestimate` on the command line.
"""
from utils.run.session import main


class args:
    dataset = "digits32"                # scikit-learn's digits at 32×32 RGB: no download
    checkpoint = "results/digits_cnn/demo"  # session JSONs, summary.csv, class order, log
    savepoint = "models/" + "/".join(checkpoint.split("/")[1:])  # models and replay memories
    data_path = ""                      # unused for digits32 (the data ship with scikit-learn)

    num_class = 10                      # classes in the run
    class_per_task = 2                  # classes a task
    num_task = 5                        # tasks (num_task * class_per_task == num_class)
    class_order = "natural"             # "natural" (0, 1, …) or "shuffled" (seeded by `seed`)
    seed = 0                            # seeds the split, class order, memory, loaders and init

    memory = 400                        # exemplars kept in total, as the MLP demo (docs/data.md: why 400)
    selection = "first"                 # exemplars: "first" m of each class (release), "random" (seeded), "herding" (iCaRL)

    method = "itaml"                    # "itaml"; the baselines: "er", "finetune", "joint"
    er_loss = "ce"                      # the baselines' loss: "ce" over seen classes, or "task_bce"
    variant = "official"                # the release's training, as train_svhn.py;
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
    epochs = 8                          # epochs a session (SVHN's 20, shortened for two CPU cores)
    schedule = [4, 6]                   # epochs at which the learning rate is multiplied by gamma
    gamma = 0.2                         # learning-rate decay factor (release)
    model_selection = "last"            # "last" epoch's model; "release": best late epoch on the test set
    sessions = {}                       # {session: {field: value}}: one session's own settings
    train_batch = 64                    # mini-batch of Alg. 1 (new task and memory shuffled)
    test_batch = 256                    # evaluation batch
    num_workers = 0                     # DataLoader workers (0: the images are in memory already)

    continuum = 20                      # test samples a continuum shares (the paper's p)
    adapt_lr = 1e-3                     # "single update": Adam learning rate (release)
    adapt_epochs = 1                    # "single update": epochs over the task's exemplars
    adapt_batch = 64                    # "single update": batch size (release)
    adapt_bn = "release"                # BatchNorm statistics after the update: as left (release) or "reestimate"
    device = "auto"                     # "auto" (GPU if visible), "cpu" or "cuda[:N]"
    augmentation = "release"            # the release's SVHN pipeline with the digits' statistics; "corrected": ours
    image_size = None                   # fixed 32×32 (only image-file data sets resize)
    channels_last = True                # convolutions in channels-last memory layout (faster)
    amp = False                         # bf16 autocast of forward passes (GPU only)
    compile = False                     # torch.compile the inner loop's forward (GPU only)
    gpu_data = False                    # hold the data set on the GPU and augment there (GPU only)
    batched_tasks = False               # all tasks' first inner step in one pass (GPU, paper variant)


if __name__ == "__main__":
    main(args)
