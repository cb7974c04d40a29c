"""Running jobs: the job registry and options, the command line of every job, launching, and progress."""
