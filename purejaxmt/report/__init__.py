"""After the run: read-only over run directories (through `purejaxmt.runner.rundir`, the format's one reader).

- `plotting`    learning curves of a run, and several runs compared
- `ablation`    a sweep's report: final scores with confidence intervals, probabilities of improvement, curves
- `stats`       interval estimates (rliable: IQM, mean, probability of improvement, stratified bootstrap)
- `render`      videos of a trained policy on every task that can be drawn
"""
