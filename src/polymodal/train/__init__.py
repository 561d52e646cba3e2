"""Training: losses (losses.py); the loop, stages and parallelism follow."""
