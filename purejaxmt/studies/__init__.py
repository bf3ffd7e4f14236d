"""Plans: a command turned into the member runs of a study (`purejaxmt.runner.study` applies one rule to each).

- `sweep`       settings x seeds, in as few compiled programs as the settings' shapes allow
- `baselines`   one single-task run per task of a multi-task command
- `transfer`    a trained multi-task agent grown to new tasks, and the transfer study (source, transfer, report)
"""
