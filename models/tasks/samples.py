"""The built-in sample inputs of the export's parity and agreement checks, per kind of input.

They are chosen to exercise what breaks exported graphs: one-token and near-limit lengths
(dynamic sequence axis), digits, punctuation, accents, non-Latin scripts and emoji
(unknown-token paths), and pairs (segment ids and the second sequence's truncation). Each
task's ``TaskSpec`` names the ones it uses; ``distilserve.models.export.samples`` batches them.
"""

from __future__ import annotations

SAMPLE_TEXTS: tuple[str, ...] = (
    "Hi.",
    "ok",
    "The film was wonderful from start to finish.",
    "This movie is terrible, and the plot makes no sense at all!",
    "I expected more... but the soundtrack was brilliant.",
    "The service at our hotel was slow, yet the staff were charming.",
    "My order #4521 arrived 3 days late (on 12/05/2023) and cost $49.99.",
    "Absolutely unbearable. Two hours I will never get back.",
    "Not bad, not great: a perfectly mediocre evening at the cinema.",
    "The battery of this phone lasts about 18 hours; charging takes 45 minutes.",
    "Café crème, naïve résumé, São Paulo and Zürich are names with accents.",
    "東京は日本の首都です。",
    "I loved it 😀👍 would watch again!!!",
    "What a surprising, moving and utterly delightful little story about friendship.",
    "The flight was delayed, the food was cold, the seats were cramped, and the crew seemed "
    "exhausted, but the pilot landed so smoothly in the storm that everyone applauded.",
    "A sentence that repeats itself. " * 12,
    (
        "In the beginning the director promised an epic, and for the first hour the film delivers: "
        "sweeping landscapes, a restless score, and performances that feel lived in rather than "
        "acted. Then the second act collapses under its own ambitions, with subplots introduced "
        "and abandoned, characters who change their minds without reason, and a romance that "
        "nobody asked for. By the time the final battle arrives, most of the audience around me "
        "had stopped caring, which is a pity, because the last ten minutes are some of the most "
        "beautiful images I have seen on a screen this year. Whether that is worth three hours "
        "of your evening is a question only you can answer, but I would wait for the streaming "
        "release, a comfortable sofa and a pause button."
    ),
    "the the the the the",
    "Is this a question?",
    "42",
    "Service: 5/5. Food: 2/5. Price: 4/5. Would I come back? Probably not.",
    "The teacher remained patient even when the class became loud after lunch.",
    "According to everyone, the actor looked exhausted but the performance felt excellent.",
    "UPPERCASE TEXT SHOULD BE HANDLED THE SAME WAY BY AN UNCASED MODEL.",
)

SAMPLE_QA_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "Where is the Eiffel Tower?",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built it.",
    ),
    (
        "When was the tower completed?",
        "Construction of the tower began in January 1887 and was completed in March 1889, in time "
        "for the World's Fair that marked the centennial of the French Revolution.",
    ),
    (
        "Who wrote the novel?",
        "The novel was written by Mary Shelley and first published anonymously in London in 1818.",
    ),
    (
        "How long does the battery last?",
        "The phone's battery lasts about 18 hours of mixed use, and a full charge takes 45 minutes "
        "with the bundled adapter.",
    ),
    ("What colour is the sky?", "On a clear day the sky is blue."),
    (
        "Which river flows through the city?",
        "The Danube flows through Budapest, dividing the hilly Buda side from the flat Pest side. "
        "Several bridges connect the two halves, the oldest being the Chain Bridge, opened in 1849. "
        "The river is also important for shipping, tourism and the city's many thermal baths, which "
        "draw visitors from all over Europe throughout the year, in every season and in any weather.",
    ),
    (
        "What did the committee decide after a very long and quite heated discussion on Tuesday?",
        "After a long debate, the committee decided to postpone the vote until next spring.",
    ),
    ("Why?", "Because it rained, the match was cancelled and moved to Sunday."),
)

# Query/document pairs for a cross-encoder: each question beside its own passage and beside the
# other questions' passages, so that fp32 and int8 are compared on relevant and unrelated
# documents alike (a ranking is only as good as its order across both).
SAMPLE_RERANK_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (question, SAMPLE_QA_PAIRS[(index + shift) % len(SAMPLE_QA_PAIRS)][1])
    for index, (question, _) in enumerate(SAMPLE_QA_PAIRS)
    for shift in (0, 1, 3)
)
