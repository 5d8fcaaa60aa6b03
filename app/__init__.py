"""LoRA Forge front-ends: the Gradio web page and the command line. Heavy work always goes through core."""
