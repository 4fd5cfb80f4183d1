"""The one exception type users see: its message is a single sentence naming the field or file."""


class ConfigError(Exception):
    """Bad input: wrong ``args``, missing or corrupt data, missing or corrupt checkpoint."""


class Diverged(ConfigError):
    """Training went non-finite: the session stops before anything of it is saved.

    ``session`` is 0-based and ``epoch`` 1-based, as the message counts them. ``reason`` is the
    message without its full stop, so that the session loop can add a clause (how to resume) with
    ``extended``.
    """

    def __init__(self, session, epoch, epochs, what, lr):
        self.session, self.epoch = session, epoch
        self.reason = (f"session {session} diverged: {what} became non-finite in epoch {epoch} of "
                       f"{epochs}; lower args.lr (now {lr:g}) or check the data")
        super().__init__(self.reason + ".")

    def extended(self, clause):
        """The message with one more clause before its full stop."""
        return f"{self.reason}; {clause}."
