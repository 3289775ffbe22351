"""lamina: the transformers API for Mistral, Mixtral, Persimmon, GPT-2, MegatronBERT, MobileBERT and MEGA."""
