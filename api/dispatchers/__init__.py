"""Where jobs are started: `local` (a process pool on this machine) and `modal` (Modal GPU functions)."""
