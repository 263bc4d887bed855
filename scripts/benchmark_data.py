"""Write the local capability benchmark in data/benchmark/ (the `benchmark` stage's shipped tasks).

    .venv/bin/python scripts/benchmark_data.py          # rewrites data/benchmark/*.jsonl (deterministic)

Four small tasks with exact answers, written for this project (the facts by hand below, the arithmetic
and instruction items from seeded templates): enough items that the paired difference between two models
has an interval of a few points. Each row is one item:

- multiple choice: ``{"question", "choices": [...], "answer": <index>}`` (scored by log-likelihood);
- exact answer: ``{"question", "answer": "<text>"}`` (greedy answer, first line, compared exactly after
  lower-casing and dropping punctuation; numbers are compared as the last number in the line);
- open answer: ``{"question", "answers": [...], "wrong": [...]}`` (the question asked as a user would,
  the greedy free answer must state the fact; ``recall``).

Held out from training: a question that any shipped training file asks (SFT, preference and red-team
prompts, compared after normalising) is left out, so the benchmark measures what a model knows beyond what
the pipeline teaches it (tests/test_benchmark.py checks it).
"""

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "benchmark"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
    "the United Kingdom": "London", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "Hungary": "Budapest", "the Czech Republic": "Prague", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Switzerland": "Bern", "Canada": "Ottawa", "Australia": "Canberra",
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago",
    "Colombia": "Bogotá", "Kenya": "Nairobi", "Thailand": "Bangkok", "South Korea": "Seoul",
    "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "Cuba": "Havana", "Vietnam": "Hanoi",
    "the Philippines": "Manila", "Indonesia": "Jakarta", "India": "New Delhi", "Ukraine": "Kyiv",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Iceland": "Reykjavik", "New Zealand": "Wellington", "Brazil": "Brasília", "Morocco": "Rabat",
    "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nigeria": "Abuja", "Ghana": "Accra",
    "Ethiopia": "Addis Ababa", "Saudi Arabia": "Riyadh", "Syria": "Damascus", "Lebanon": "Beirut",
    "Jordan": "Amman", "Afghanistan": "Kabul", "Nepal": "Kathmandu", "Malaysia": "Kuala Lumpur",
    "Venezuela": "Caracas", "Ecuador": "Quito", "Uruguay": "Montevideo", "Algeria": "Algiers",
    "Tunisia": "Tunis", "Libya": "Tripoli", "Sudan": "Khartoum", "Uganda": "Kampala", "Zimbabwe": "Harare",
    "Senegal": "Dakar", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Belarus": "Minsk", "Armenia": "Yerevan",
    "Mongolia": "Ulaanbaatar", "North Korea": "Pyongyang", "Cambodia": "Phnom Penh", "Jamaica": "Kingston",
    "Qatar": "Doha", "Oman": "Muscat", "Scotland": "Edinburgh", "Wales": "Cardiff",
}
# Other names a free answer may use for an answer (the recall task accepts them too).
ALIASES = {
    "Bogotá": ["Bogota"], "Brasília": ["Brasilia"], "Kyiv": ["Kiev"], "Reykjavik": ["Reykjavík"],
    "the pound sterling": ["pound", "pounds", "GBP"], "the yen": ["JPY"], "the Pacific Ocean": ["Pacific"],
    "Mount Everest": ["Everest"], "William Shakespeare": ["Shakespeare"],
    "Leonardo da Vinci": ["da Vinci", "Leonardo"], "Neil Armstrong": ["Armstrong"], "the Sahara": ["Sahara"],
    "the Nile": ["Nile"], "carbon dioxide": ["CO2"], "butterflies": ["butterfly", "moths", "moth"],
    "the blue whale": ["blue whale"], "a kitten": ["kitten"], "a puppy": ["puppy", "pup"],
    "the piano": ["piano", "keyboard"], "a circle": ["circle", "sphere"], "the sheep": ["sheep"],
    "the heart": ["heart"], "the lungs": ["lungs", "lung"], "the cheetah": ["cheetah"], "the lion": ["lion"],
    "the Sun": ["Sun"], "the Moon": ["Moon"], "mercury": ["Hg"], "H2O": ["H₂O"],
}
NUMBER_NAMES = {"0": ["zero"], "1": ["one"], "2": ["two"], "3": ["three"], "4": ["four"], "5": ["five"],
                "6": ["six"], "7": ["seven"], "8": ["eight"], "9": ["nine"], "10": ["ten"], "11": ["eleven"],
                "12": ["twelve"], "24": ["twenty-four", "twenty four"], "52": ["fifty-two", "fifty two"],
                "60": ["sixty"], "90": ["ninety"], "100": ["one hundred", "a hundred"],
                "360": ["three hundred and sixty", "three hundred sixty"],
                "1000": ["one thousand", "a thousand"]}
DATA = Path(__file__).resolve().parent.parent / "data"
TRAINING_FILES = ("sft_train.jsonl", "pref_train.jsonl", "redteam_train.jsonl")

# (question, answer, three wrong answers): general knowledge a small instruct model may know
FACTS = [
    ("How many metres are in a kilometre?", "1000", ["100", "10", "1609"]),
    ("How many grams are in a kilogram?", "1000", ["100", "10", "500"]),
    ("How many centimetres are in a metre?", "100", ["10", "1000", "12"]),
    ("How many millimetres are in a centimetre?", "10", ["100", "1000", "12"]),
    ("How many minutes are in an hour?", "60", ["100", "30", "24"]),
    ("How many seconds are in a minute?", "60", ["100", "10", "30"]),
    ("How many hours are in a day?", "24", ["12", "60", "48"]),
    ("How many days are in a week?", "7", ["5", "10", "6"]),
    ("How many months are in a year?", "12", ["10", "6", "52"]),
    ("How many days are in a leap year?", "366", ["365", "360", "364"]),
    ("How many years are in a century?", "100", ["10", "1000", "50"]),
    ("How many years are in a decade?", "10", ["100", "5", "12"]),
    ("How many items are in a dozen?", "12", ["10", "6", "20"]),
    ("How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("How many legs does an insect have?", "6", ["8", "4", "10"]),
    ("How many sides does a triangle have?", "3", ["4", "5", "6"]),
    ("How many sides does a hexagon have?", "6", ["5", "8", "7"]),
    ("How many sides does an octagon have?", "8", ["6", "10", "7"]),
    ("How many sides does a pentagon have?", "5", ["6", "4", "8"]),
    ("How many degrees are in a right angle?", "90", ["180", "45", "360"]),
    ("How many degrees are in a full circle?", "360", ["180", "100", "90"]),
    ("At how many degrees Celsius does water boil at sea level?", "100", ["90", "50", "212"]),
    ("At how many degrees Celsius does water freeze?", "0", ["32", "10", "-10"]),
    ("How many continents are there?", "7", ["5", "6", "9"]),
    ("How many planets are in the solar system?", "8", ["9", "7", "10"]),
    ("How many players does a football (soccer) team have on the field?", "11", ["10", "9", "12"]),
    ("How many colours are in a rainbow?", "7", ["5", "6", "8"]),
    ("How many strings does a standard guitar have?", "6", ["4", "5", "7"]),
    ("How many wheels does a bicycle have?", "2", ["3", "4", "1"]),
    ("How many weeks are in a year?", "52", ["48", "12", "36"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Earth", "Mars"]),
    ("Which is the largest planet in the solar system?", "Jupiter", ["Saturn", "Earth", "Neptune"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Mercury"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Go", "Gd"]),
    ("What is the chemical symbol for iron?", "Fe", ["Ir", "In", "F"]),
    ("What is the chemical symbol for sodium?", "Na", ["So", "S", "Sd"]),
    ("What is the chemical formula of water?", "H2O", ["CO2", "O2", "H2O2"]),
    ("Which gas do plants take in from the air for photosynthesis?", "carbon dioxide",
     ["oxygen", "nitrogen", "helium"]),
    ("Which gas do humans need to breathe to live?", "oxygen", ["carbon dioxide", "helium", "neon"]),
    ("What is the largest ocean on Earth?", "the Pacific Ocean",
     ["the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean"]),
    ("What is the tallest mountain on Earth?", "Mount Everest", ["K2", "Mont Blanc", "Kilimanjaro"]),
    ("What is the largest mammal?", "the blue whale", ["the elephant", "the giraffe", "the hippopotamus"]),
    ("What is the fastest land animal?", "the cheetah", ["the lion", "the horse", "the elephant"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the tiger", "the bear", "the wolf"]),
    ("What do bees make?", "honey", ["milk", "silk", "wax paper"]),
    ("Which organ pumps blood around the body?", "the heart", ["the lungs", "the liver", "the brain"]),
    ("Which organ do humans use to breathe?", "the lungs", ["the heart", "the stomach", "the kidneys"]),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", ["Charles Dickens", "Jane Austen", "Mark Twain"]),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Pablo Picasso", "Vincent van Gogh", "Claude Monet"]),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong",
     ["Yuri Gagarin", "Buzz Aldrin", "John Glenn"]),
    ("What is the hardest natural substance?", "diamond", ["gold", "iron", "granite"]),
    ("What is frozen water called?", "ice", ["steam", "fog", "sand"]),
    ("What colour is the sky on a clear day?", "blue", ["green", "red", "yellow"]),
    ("What colour are ripe bananas?", "yellow", ["blue", "purple", "black"]),
    ("What colour do you get by mixing blue and yellow?", "green", ["purple", "orange", "red"]),
    ("What colour do you get by mixing red and white?", "pink", ["green", "blue", "brown"]),
    ("Which star is at the centre of our solar system?", "the Sun", ["the Moon", "Sirius", "Polaris"]),
    ("What is the natural satellite of the Earth?", "the Moon", ["the Sun", "Mars", "Venus"]),
    ("Which season comes after winter?", "spring", ["autumn", "summer", "winter"]),
    ("Which day comes after Monday?", "Tuesday", ["Sunday", "Wednesday", "Friday"]),
    ("Which month comes after January?", "February", ["March", "December", "April"]),
    ("What is the opposite of hot?", "cold", ["warm", "big", "fast"]),
    ("What is the opposite of up?", "down", ["left", "over", "high"]),
    ("What is the opposite of day?", "night", ["morning", "week", "sun"]),
    ("What is the plural of mouse?", "mice", ["mouses", "mousen", "meese"]),
    ("What is the plural of child?", "children", ["childs", "childes", "childer"]),
    ("What is the past tense of go?", "went", ["goed", "gone", "going"]),
    ("What is the past tense of eat?", "ate", ["eated", "eaten", "eats"]),
    ("What do you call a baby cat?", "a kitten", ["a puppy", "a calf", "a cub"]),
    ("What do you call a baby dog?", "a puppy", ["a kitten", "a foal", "a lamb"]),
    ("Which language is mainly spoken in Brazil?", "Portuguese", ["Spanish", "French", "Italian"]),
    ("Which language is mainly spoken in Mexico?", "Spanish", ["Portuguese", "English", "French"]),
    ("What is the currency of Japan?", "the yen", ["the won", "the yuan", "the dollar"]),
    ("What is the currency of the United Kingdom?", "the pound sterling", ["the euro", "the dollar", "the franc"]),
    ("How many hearts does a human have?", "1", ["2", "3", "4"]),
    ("Which instrument has black and white keys?", "the piano", ["the violin", "the drum", "the flute"]),
    ("Which shape has all points at the same distance from its centre?", "a circle",
     ["a square", "a triangle", "a rectangle"]),
    ("What is the boiling point of water in degrees Fahrenheit?", "212", ["100", "180", "32"]),
    ("What is the largest desert in Africa?", "the Sahara", ["the Gobi", "the Kalahari", "the Atacama"]),
    ("What is the longest river in Africa?", "the Nile", ["the Congo", "the Niger", "the Zambezi"]),
    ("On which continent is Egypt?", "Africa", ["Asia", "Europe", "South America"]),
    ("On which continent is Japan?", "Asia", ["Europe", "Africa", "Oceania"]),
    ("On which continent is Brazil?", "South America", ["Africa", "North America", "Asia"]),
    ("Which animal gives us wool?", "the sheep", ["the cow", "the pig", "the horse"]),
    ("What do caterpillars turn into?", "butterflies", ["spiders", "beetles", "frogs"]),
    ("What is the main ingredient of bread?", "flour", ["rice", "sugar", "cheese"]),
    ("Which metal is liquid at room temperature?", "mercury", ["iron", "copper", "aluminium"]),
    ("What force pulls objects towards the Earth?", "gravity", ["magnetism", "friction", "wind"]),
]

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]
WORDS = ["apple", "river", "garden", "window", "orange", "pencil", "yellow", "mountain", "table", "music",
         "candle", "forest", "silver", "rabbit", "bottle", "planet", "winter", "summer", "bridge", "castle",
         "ocean", "violin", "basket", "lemon", "tiger", "cloud", "kettle", "ladder", "mirror", "pepper",
         "rocket", "saddle", "tomato", "tunnel", "wallet", "zebra", "anchor", "button", "carpet", "dragon"]
ANIMALS = ["dog", "cat", "horse", "cow", "sheep", "lion", "rabbit", "mouse", "eagle", "shark"]
THINGS = ["chair", "spoon", "car", "book", "lamp", "shoe", "rock", "cup", "table", "pencil"]


def normalise(question: str) -> str:
    return re.sub(r"\W+", " ", question.lower()).strip()


def trained_questions() -> set[str]:
    """Every question the shipped training files ask (normalised): the benchmark leaves them out."""
    seen = set()
    for name in TRAINING_FILES:
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            prompt = row["messages"][0]["content"] if "messages" in row else row["prompt"]
            seen.add(normalise(prompt if isinstance(prompt, str) else prompt[-1]["content"]))
    return seen


def held_out(rows: list, trained: set[str]) -> list:
    return [r for r in rows if normalise(r[0]) not in trained]


def without_article(text: str) -> str:
    return re.sub(r"^(the|a|an)\s+", "", text)


def facts(rng: random.Random, trained: set[str]) -> list[dict]:
    rows = list(FACTS)
    cities = list(CAPITALS.values())
    for country, city in CAPITALS.items():
        rows.append((f"What is the capital of {country}?", city, rng.sample([c for c in cities if c != city], 3)))
    out = []
    for question, answer, wrong in held_out(rows, trained):
        choices = [answer, *wrong]
        rng.shuffle(choices)
        out.append({"question": question, "choices": choices, "answer": choices.index(answer)})
    return out


def arithmetic(rng: random.Random) -> list[dict]:
    out = []
    for _ in range(60):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append({"question": f"What is {a} + {b}? Answer with the number only.", "answer": str(a + b)})
    for _ in range(50):
        a = rng.randint(5, 30)
        b = rng.randint(1, a)
        out.append({"question": f"What is {a} - {b}? Answer with the number only.", "answer": str(a - b)})
    for _ in range(50):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        out.append({"question": f"What is {a} times {b}? Answer with the number only.", "answer": str(a * b)})
    for _ in range(20):
        a = rng.randint(2, 25)
        out.append({"question": f"What is double {a}? Answer with the number only.", "answer": str(2 * a)})
    return out


def instructions(rng: random.Random) -> list[dict]:
    out = []
    for w in WORDS:
        out.append({"question": f"Reply with only the word \"{w}\" and nothing else.", "answer": w})
    for w in rng.sample(WORDS, 30):
        out.append({"question": f"What is the first letter of the word \"{w}\"? Reply with the letter only.",
                    "answer": w[0]})
    for n in range(1, 21):
        out.append({"question": f"Write the number {NUMBER_WORDS[n]} in digits. Reply with the digits only.",
                    "answer": str(n)})
    for _ in range(30):
        a, b = rng.sample(range(1, 100), 2)
        out.append({"question": f"Which number is larger, {a} or {b}? Reply with the number only.",
                    "answer": str(max(a, b))})
    for x in ANIMALS:
        out.append({"question": f"Is a {x} an animal? Answer yes or no.", "answer": "yes"})
    for x in THINGS:
        out.append({"question": f"Is a {x} an animal? Answer yes or no.", "answer": "no"})
    return out


def recall(trained: set[str]) -> list[dict]:
    """The facts of FACTS and the capitals asked as a user would ("How many metres are in a kilometre?", the
    main job's held-out kind): the free answer must state the right one (its other names count) before any
    wrong one (for a capital: any other capital in the list)."""
    cities = list(CAPITALS.values())
    capitals = [(f"What is the capital of {country}?", city, [c for c in cities if c != city])
                for country, city in CAPITALS.items()]
    out = []
    for q, a, wrong in held_out(FACTS, trained) + held_out(capitals, trained):
        answers = [without_article(a), *ALIASES.get(a, []), *NUMBER_NAMES.get(a, [])]
        out.append({"question": q, "answers": list(dict.fromkeys(answers)),
                    "wrong": [without_article(w) for w in wrong]})
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    trained = trained_questions()
    tasks = {"facts": facts(random.Random(1), trained), "recall": recall(trained),
             "arithmetic": arithmetic(random.Random(2)), "instructions": instructions(random.Random(3))}
    for name, rows in tasks.items():
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} items → {OUT / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
