"""Training: a TrainConfig in, a trained run folder (last.pt, best.pt, metrics.jsonl) out.

    config.py       TrainConfig, every option of a run
    trainer.py      train() and Trainer: build, the loop, evaluate and save, finish
    setup.py        the run's data, model and optimizer, fresh or from the checkpoint it resumes
    step.py         TrainStep: one optimizer step (the benchmarks time this same object)
    schedule.py     the learning-rate schedule (warmup, decay, plateau) and the time budget's horizon
    init.py         --init: the initial weights of a fresh run
    nan_guard.py    a NaN or infinite loss or gradient stops training before the optimizer applies it
    signals.py      Ctrl-C / SIGTERM: finish the step, save last.pt, exit 130
    resume.py       which checkpoint and options a resumed run takes, and whether it is the same run
    rng.py          every random state: seeded, saved, restored
    determinism.py  --deterministic
    run_dir.py      the run folder and its metrics.jsonl
    metrics.py      the loss and tokens/s reported between evaluations
    distributed.py  torchrun: the process group, DDP, one writer, stopping together, evaluation sums
"""
