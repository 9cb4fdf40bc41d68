"""Where a rendered job runs: `local` and `local_run` (processes on this machine), `kubernetes` (a cluster,
through the official client: `kubeconfig` finds it, `kube_errors` and `kube_retry` say and retry its failures,
`kube_submit` and `kube_resume` create and replace a submission's objects)."""
