"""The default user messages of a load run."""

# Prompts that make a small chat model write at length, so answers run to max_tokens on most requests.
BUILTIN_PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a walk through a busy market in a city by the sea.",
    "List ten ideas for a weekend project with children and explain each one.",
    "Explain the difference between weather and climate to a curious student.",
    "Write a letter to a friend describing your favourite season and why.",
    "Describe how bread is made, from the field to the table.",
    "Tell me about the history of the bicycle in a few paragraphs.",
)
