"""Records, chat templates and loss masks, the Grain input pipeline."""
