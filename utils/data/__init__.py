"""The data behind ``data_sources.py`` and ``incremental_dataloader.py``: each data set's reader
(``readers``) and what it returns (``sources``), the transforms and statistics (``augmentation``), and
the replay memory (``memory``)."""
