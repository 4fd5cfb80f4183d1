"""One logger for a run: lines go to the console (around tqdm's bars) and to <checkpoint>/log.txt."""
import logging
import os

from tqdm import tqdm


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        tqdm.write(self.format(record))


def get_logger(checkpoint):
    logger = logging.getLogger("itaml")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    os.makedirs(checkpoint, exist_ok=True)
    to_file = logging.FileHandler(os.path.join(checkpoint, "log.txt"))
    to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(to_file)
    return logger


def quiet_logger():
    """The logger of a torchrun rank other than 0: errors only, on the console, no log file (rank 0
    writes log.txt and the tables)."""
    logger = logging.getLogger("itaml.rank")
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    if not logger.handlers:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
    return logger
