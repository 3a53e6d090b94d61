"""OpenAI's Responses API: its shape, and the state behind it (stored responses, sealed reasoning)."""
