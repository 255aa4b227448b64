"""A stand-in for SLURM's ``srun`` on one machine: starts ``SLURM_NTASKS`` copies of the command
with the variables SLURM gives each task (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``,
``SLURM_STEP_NODELIST``, ``SLURM_JOB_ID``), forwards SIGTERM to them, and exits with the worst
exit status. Tests put it on PATH as ``srun`` and run the sbatch template with bash. With
``SRUN_STANDIN_STEP_DELAY`` > 0 the main job runs as tests/slow_segment.py (a pause after every
step), so that a test can signal it in the middle of training.
"""
import os
import signal
import subprocess
import sys


def main():
    n = int(os.environ.get("SLURM_NTASKS", "1"))
    cmd = sys.argv[1:]
    delay = float(os.environ.get("SRUN_STANDIN_STEP_DELAY", "0"))
    if delay > 0 and "experiments.unet_segment" in cmd:
        i = cmd.index("experiments.unet_segment")
        cmd = cmd[:i] + ["tests.slow_segment", str(delay)] + cmd[i + 1:]
    procs = []
    for i in range(n):
        env = {**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "SLURM_NTASKS": str(n),
               "SLURM_STEP_NODELIST": os.environ.get("SLURM_STEP_NODELIST", "127.0.0.1")}
        procs.append(subprocess.Popen(cmd, env=env))

    def forward(signum, frame):
        del frame
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    codes = [p.wait() for p in procs]
    sys.exit(max(abs(c) for c in codes))


if __name__ == "__main__":
    main()
