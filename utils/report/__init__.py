"""Reporting: a run's session records read and runs grouped by setting (``runs``), the metrics
(``metrics``), the tables and files of the report (``tables``), its plots (``plots``), a session's
table and CSV row (``records``), and the command line ``python3 -m utils.report``."""
