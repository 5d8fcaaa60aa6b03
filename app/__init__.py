"""LoRA Forge's front-ends: the web page (app.web) and the command line (app.cli). Both only call core."""
