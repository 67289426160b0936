"""What every layer above shares: typed config, data reading, model/tokenizer loading, the tiny default, chat
templates."""
