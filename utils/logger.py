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
