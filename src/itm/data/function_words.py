"""English function words: the caption words that name nothing a photo can show.

The explanation pictures draw no panel for them ("a", "near", "the" got heat maps labelled "a
guess"), and they name no ImageNet class. The list is written here, not downloaded: the Snowball
English stop-word list (M. F. Porter, snowballstem.org/algorithms/english/stop.txt, the list NLTK's
``stopwords.words("english")`` is built on), in the form ``itm.data.tokenize`` leaves it (apostrophes
deleted: "isn't" -> "isnt"), plus the prepositions of place, pronouns, determiners and modal
auxiliaries that captions use and that list lacks ("near", "behind", "someone", "will", ...), minus
the words that also name things: contractions that are words of their own ("shed" < "she'd", "well"
< "we'll", "ill", "id", "hell", "shell", "wed"). Kept as content words, on purpose: number words
("two dogs": how many things the photo shows), "can" (a soda can), nouns of place ("front", "top",
"side", "middle": the part of the photo they name), and verbs, adjectives and adverbs of manner.
"""

from __future__ import annotations

# the Snowball list, apostrophes deleted as the tokenizer does
_SNOWBALL = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing would should could ought im youre hes
shes its were theyre ive youve weve theyve youd hed shed wed theyd youll hell shell well theyll isnt arent
wasnt werent hasnt havent hadnt doesnt dont didnt wont wouldnt shant shouldnt cant cannot couldnt mustnt
lets thats whos whats heres theres whens wheres whys hows a an the and but if or because as until while
of at by for with about against between into through during before after above below to from up down in
out on off over under again further then once here there when where why how all any both each few more
most other some such no nor not only own same so than too very
"""
# function words of captions the Snowball list lacks: prepositions and adverbs of place, pronouns,
# determiners and quantifiers, conjunctions, modal auxiliaries
_ADDED = """
near nearby along across behind beside besides beneath underneath around toward towards onto upon inside
outside within without among amongst past throughout via next atop amid away
someone somebody something anyone anybody anything everyone everybody everything nobody nothing another
others either neither every many several much whose whatever whoever
also yet though although whether since unless just even still
will shall may might must
"""
# words the contractions above collapse into that are words of their own (and name things)
_NOT_FUNCTION = {"shed", "well", "hell", "shell", "wed", "ill", "id"}

FUNCTION_WORDS: frozenset[str] = frozenset((set(_SNOWBALL.split()) | set(_ADDED.split())) - _NOT_FUNCTION)


def is_function_word(word: str) -> bool:
    """Whether a caption token (lower case, as ``tokenize`` gives it) is a function word: no panel, no class."""
    return word.lower() in FUNCTION_WORDS


def content_positions(words: list[str]) -> list[int]:
    """The positions of the words that get a picture panel: every word but the function words; all of
    them when the caption has nothing else (a caption of function words alone still gets its panels)."""
    kept = [n for n, w in enumerate(words) if not is_function_word(w)]
    return kept or list(range(len(words)))
