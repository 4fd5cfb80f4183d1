"""A checked config for unit tests and for the ranks tests spawn."""
from types import SimpleNamespace

from utils.config import check_args


def make_cfg(**over):
    """The digits demo's args with ``over`` on top, through ``check_args``."""
    import train_digits
    fields = {k: getattr(train_digits.args, k) for k in dir(train_digits.args)
              if not k.startswith("_")}
    fields.update(over)
    return check_args(SimpleNamespace(**fields))
