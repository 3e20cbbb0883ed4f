"""What ``python train.py`` does: compose the config, check it, build and fit (checkpoint IO, cluster, preflight)."""
