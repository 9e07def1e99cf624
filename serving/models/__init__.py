"""The two model families: RoBERTox (transformer) and the subword-embedding LSTM."""
