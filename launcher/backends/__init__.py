"""Where a rendered job runs: `local` (processes on this machine). A cluster backend comes later."""
