"""The contract: the job spec's models (`job` and its sections: `model`, `data`, `training`, `resources`, `output`,
`export`; `base`), strategies and matrices, YAML I/O and `--set`
overrides (`io`), and the docs generated from it (`doc`). Imports pydantic and yaml only: never torch or
transformers, so the launcher and every pod can read a spec."""
