"""HXP Enterprise LLM: real-time OpenAI-compatible serving of OpenChat-3.5 on vLLM."""
