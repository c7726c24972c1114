"""Output formats beside the transformers safetensors folder: GGUF in -> GGUF out (`gguf`), PEFT IA3 adapters (`peft`)."""
