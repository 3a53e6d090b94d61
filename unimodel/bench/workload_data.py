"""The texts the built-in workloads are made of: filler words, reasoning questions, tool-calling cases.

Data only (no code runs at import but building these literals). Kept apart from ``workloads.py`` so that the
builders stay short and the texts can be read and edited as a list.
"""

from __future__ import annotations

from typing import Any

#: Short, common English words: with the usual BPE tokenizers (Mistral's tekken, Llama's, GPT's) each one,
#: with its leading space, is a single token, so N words make a prompt of about N tokens.
FILLER_WORDS: tuple[str, ...] = (
    "the", "time", "people", "year", "way", "day", "man", "thing", "woman", "life", "child", "world",
    "school", "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case",
    "week", "company", "system", "program", "question", "work", "number", "night", "point", "home", "water",
    "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book", "eye", "job",
    "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power",
    "hour", "game", "line", "end", "member", "law", "car", "city", "name", "team", "minute", "idea", "kid",
    "body", "back", "parent", "face", "others", "level", "office", "door", "health", "person", "art", "war",
    "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy", "moment", "air",
    "teacher", "force", "education", "good", "new", "first", "last", "long", "great", "little", "own", "other",
    "old", "big", "high", "small", "large", "next", "early", "young", "important", "few", "public", "bad",
    "same", "able", "run", "make", "know", "take", "see", "come", "think", "look", "want", "give", "use",
    "find", "tell", "ask", "seem", "feel", "try", "leave", "call", "keep", "let", "begin", "show", "hear",
    "play", "move", "live", "believe", "bring", "happen", "write", "sit", "stand", "lose", "pay", "meet",
)

#: Questions that make a reasoning model think before it answers (short answers, checkable by a person).
REASONING_QUESTIONS: tuple[str, ...] = (
    "How many times does the letter r appear in the word strawberry?",
    "A train leaves at 9:40 and arrives at 13:05. How long is the trip, in minutes?",
    "Is 391 a prime number? Explain briefly.",
    "What is the sum of the first 20 odd numbers?",
    "A bat and a ball cost 1.10 in total. The bat costs 1.00 more than the ball. How much is the ball?",
    "If 5 machines make 5 widgets in 5 minutes, how long do 100 machines take to make 100 widgets?",
    "What is 17 multiplied by 23?",
    "Which is larger: 2 to the power 10, or 10 to the power 3?",
    "A rectangle has a perimeter of 30 and a width of 5. What is its area?",
    "What day of the week comes 100 days after a Monday?",
    "How many edges does a cube have?",
    "Sort these numbers from smallest to largest: 0.5, 1/3, 0.45, 2/5.",
    "If a shirt costs 40 after a 20 percent discount, what was its original price?",
    "What is the next number in the sequence 2, 6, 12, 20, 30?",
    "How many minutes are there in a week?",
    "Three friends split a bill of 87 equally and leave a tip of 15 percent of the bill. How much does each pay?",
)

#: Function tools offered with every tool-calling case (OpenAI ``tools`` entries).
TOOLS: tuple[dict[str, Any], ...] = (
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Current local time in an IANA time zone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between two currencies.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["amount", "from", "to"]}}},
    {"type": "function", "function": {
        "name": "search_flights", "description": "Search flights between two airports on a date.",
        "parameters": {"type": "object", "properties": {
            "origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"}},
            "required": ["origin", "destination", "date"]}}},
)

#: User requests that each call for one (or two) of the tools above.
TOOL_PROMPTS: tuple[str, ...] = (
    "What is the weather like in Paris right now, in celsius?",
    "What time is it in Tokyo?",
    "Convert 250 US dollars to euros.",
    "Find me a flight from JFK to LHR on 2026-03-14.",
    "Is it raining in Seattle? Use fahrenheit.",
    "What time is it in Sydney, and what is the weather there?",
    "How much is 1000 Japanese yen in British pounds?",
    "Search flights from CDG to SFO on 2026-07-01.",
)

#: What the vision workload asks about each generated picture.
VISION_QUESTION = "What shape is in this picture, and what color is it? Answer in a few words."
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 90, 220), "orange": (240, 150, 30),
    "purple": (140, 60, 180), "black": (20, 20, 20),
}
