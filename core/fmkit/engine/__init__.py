"""The engine: the Trainer and what it runs on (the model call around the objective, optimizer/EMA/
schedule, the data stream, distributed helpers, checkpoints, the metrics log, evaluation). Imports
the math layer, never the application."""
