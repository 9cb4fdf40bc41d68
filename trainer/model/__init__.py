"""The base model and its adapter: loading (`load`: HF folders, `s3://`, hub ids, GGUF; LoRA/QLoRA/DoRA),
per-architecture facts (`arch`), and the packed-sample isolation check (`isolation`). Never imports `launcher`."""
