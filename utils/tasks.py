"""The class-incremental split's arithmetic, in one place. Labels are positions in the class order
(``incremental_dataloader.py``): with C = ``args.class_per_task``, task k holds positions
[k·C, (k+1)·C) and owns the same rows of the head, and after session t the positions 0..(t+1)·C − 1
have been seen. Every function works on ints and on integer tensors or arrays alike."""


def task_slice(k, class_per_task):
    """Task k's rows of the head (and its class positions)."""
    return slice(k * class_per_task, (k + 1) * class_per_task)


def task_classes(k, class_per_task):
    """Task k's class positions, in order."""
    return list(range(k * class_per_task, (k + 1) * class_per_task))


def task_of(labels, class_per_task):
    """The task each class position belongs to."""
    return labels // class_per_task


def within_task(labels, k, class_per_task):
    """Positions of task k's classes counted from its first class: 0..C − 1."""
    return labels - k * class_per_task


def class_at(within, k, class_per_task):
    """The class position of the ``within``-th class of task k (``within_task``'s inverse)."""
    return within + k * class_per_task


def seen_classes(session, class_per_task):
    """How many classes have been seen after ``session`` (0-based): positions below it."""
    return (session + 1) * class_per_task
