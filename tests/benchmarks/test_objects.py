"""The offline singulariser and the CHAIR mention parser with mmalign's COCO vocabulary."""

import pytest

from mmalign.grounding.objects import COCO_SYNONYMS, ObjectVocabulary
from mmalign.grounding.text import singularize, tokenize

COCO = ObjectVocabulary.coco()


@pytest.mark.parametrize(
    "plural, singular",
    [
        ("dogs", "dog"), ("men", "man"), ("women", "woman"), ("children", "child"), ("people", "person"),
        ("mice", "mouse"), ("knives", "knife"), ("leaves", "leaf"), ("calves", "calf"), ("gloves", "glove"),
        ("glasses", "glass"), ("benches", "bench"), ("boxes", "box"), ("sandwiches", "sandwich"),
        ("ponies", "pony"), ("cookies", "cookie"), ("ties", "tie"), ("tomatoes", "tomato"), ("shoes", "shoe"),
        ("buses", "bus"), ("bus", "bus"), ("skis", "ski"), ("tennis", "tennis"), ("scissors", "scissors"),
        ("sheep", "sheep"), ("giraffes", "giraffe"), ("horses", "horse"), ("teeth", "tooth"),
        ("Dogs", "Dog"), ("is", "is"), ("this", "this"), ("dog", "dog"),
    ],
)
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_tokenize_splits_hyphens_and_drops_possessives():
    assert tokenize("The dog's hot-dog, don't!") == ["The", "dog", "hot", "dog", "don't"]


def test_coco_vocabulary_covers_the_80_categories():
    assert len(COCO.categories) == 80
    for category in COCO_SYNONYMS:
        assert COCO.category_of(category) == category
    assert COCO.category_of("skis") == "skis"  # the category named in the plural
    assert COCO.category_of("puppies") == "dog"


def test_a_word_naming_two_categories_is_rejected():
    with pytest.raises(ValueError, match="'bat' names both"):
        ObjectVocabulary("bad", {"baseball bat": ("bat",), "bird": ("bat",)})
    with pytest.raises(ValueError, match="one or two words"):
        ObjectVocabulary("bad", {"oven": ("stove top oven",)})


def categories(text):
    return [m.category for m in COCO.mentions(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A hot dog on a plate.", ["hot dog"]),  # not a dog
        ("Two teddy bears on a bed.", ["teddy bear", "bed"]),  # not bears
        ("A traffic light over the street.", ["traffic light"]),
        ("A baby elephant and an adult giraffe.", ["elephant", "giraffe"]),  # not a person
        ("A baby sleeps.", ["person"]),
        ("A passenger train passes.", ["train"]),  # no passenger (person)
        ("A passenger jet lands.", ["airplane"]),
        ("A man wearing a bow tie.", ["person", "tie"]),
        ("The batter stands at home plate.", ["person"]),
        ("Train tracks run through the field.", []),  # "train track" blocks train
        ("Dirt bikes in the mud.", ["motorcycle"]),  # not bicycles
        ("A dog, a dog and two dogs.", ["dog", "dog", "dog"]),  # duplicates kept
    ],
)
def test_compound_and_special_rules(text, expected):
    assert categories(text) == expected


def test_toilet_seat_is_the_toilet_and_drops_every_seat():
    assert categories("The toilet seat is up.") == ["toilet"]
    assert categories("A seat next to the toilet, and another seat.") == ["toilet"]
    assert categories("A wooden seat by the window.") == ["chair"]


def test_vocabulary_from_categories_for_other_datasets():
    vocab = ObjectVocabulary.from_categories(["circle", "knife", "fish"])
    assert [m.category for m in vocab.mentions("Two circles, three knives and fish.")] == ["circle", "knife", "fish"]
    assert vocab.mentions("A dog.") == []
