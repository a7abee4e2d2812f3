"""Workers on a cluster: SLURM array jobs and Kubernetes Indexed Jobs of ``kdsweep study worker``.

The coordination stays where it is (PostgreSQL for the study, an MLflow server for the runs);
this package only writes the job that starts one worker per GPU, and keeps passwords out of it.
"""
