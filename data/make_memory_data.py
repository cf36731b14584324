"""Generate chat data that teaches a small model to USE a memory note, and the benchmark that measures it.

A chatbot's memory (stage 06) retrieves the user's earlier messages that bear on the new one and puts them in the
prompt just before it. A small pretrained model does not know what to do with them: asked "What do you call me?"
with "Morning! Rafael here." a few lines up, it invents a name. This script writes

  data/memory_chats.jsonl   chat-SFT conversations for stage 05 (one JSON object a line: {"messages": [...]}):
                            the note holds the answer and the reply uses it; the note holds two values and the
                            reply gives the newest; the note (or the conversation) does not hold the answer and the
                            reply says the user has not said it, inventing nothing; the note is beside the point and
                            the reply just answers the question.
  data/memory_eval.json     the benchmark's synthetic users for stage 06's evaluation (companions/06_memory_eval.py):
                            facts stated in varied natural phrasings, one update, questions worded unlike the
                            statements, one question about something never said.

Three disjoint pools of user names, other names, values, fact phrasings, question phrasings and small talk, one for
each "set" of eval users: TRAIN (memory_chats.jsonl and the eval users of set "train"), DEV (the first edition's
held-out users, looked at while the chatbot was built: set "dev") and HELDOUT (fresh users written afterwards, that
nothing was tuned on: set "heldout", the only users marked "heldout": true). Deterministic (fixed seeds): running
the script again gives byte-identical files; adding the fresh pool left memory_chats.jsonl and the first edition's
users as they were.

Run:  python data/make_memory_data.py            (write both files)
      python data/make_memory_data.py --check    (fail if the files on disk are not what this script writes)
"""
import argparse
import json
import os
import random
import sys
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------------
# THE MEMORY FORMAT (stage 06 builds exactly this user message; stage 05 trains on it)
# The retrieved earlier user messages (verbatim, one line each) go into the user's newest message, in front of it.
# With nothing retrieved the message is sent as it is.
#
#     Earlier in this conversation the user said:
#     - Morning! Rafael here.
#     - I spend my days fixing lifts in office towers.
#
#     Now the user says: What do you call me?
MEMORY_HEADER = "Earlier in this conversation the user said:"
MEMORY_ITEM = "- {}"
MEMORY_NEW_MESSAGE = "Now the user says: {}"
MEMORY_MAX_ITEMS = 6          # at most this many earlier messages in one note (06 recalls up to 6)
OTHER_LINES = 5               # a note holds up to this many lines beside the one(s) with the answer


def memory_message(earlier, message):
    """The user message the model sees: the retrieved earlier user messages and the new message."""
    if not earlier:
        return message
    items = "\n".join(MEMORY_ITEM.format(" ".join(text.split())) for text in earlier[-MEMORY_MAX_ITEMS:])
    return f"{MEMORY_HEADER}\n{items}\n\n{MEMORY_NEW_MESSAGE.format(message)}"


# ----------------------------------------------------------------------------------------------------------------
# config
HERE = Path(globals().get("__file__", "data/make_memory_data.py")).resolve().parent
CHATS_JSONL = HERE / "memory_chats.jsonl"
EVAL_JSON = HERE / "memory_eval.json"
SEED = 20261130
N_CHATS = {"recall": 2400, "update": 1200, "abstain": 1800, "no_note": 200, "beside_the_point": 400}   # 6,000 in all
MAX_CHAT_CHARS = 650   # ...less those longer than this (about 4 characters a token: 05 cuts at 192 tokens)
N_EVAL_USERS = {"dev": 36, "train": 12, "heldout": 36}
SYSTEM_PROMPTS = ["You are a helpful AI assistant.", "You are a helpful assistant.",
                  "You are a friendly assistant. Answer briefly."]
# accepted answers to an abstain question (the evaluator lowercases the reply and turns ’ into ')
ABSTAIN_ANSWERS = ["not told", "haven't told", "have not told", "didn't tell", "did not tell", "never told",
                   "don't know", "do not know", "didn't mention", "did not mention", "haven't mentioned",
                   "have not mentioned", "never mentioned", "not mentioned", "haven't said", "have not said",
                   "didn't say", "did not say", "no idea", "not sure", "haven't shared", "didn't share"]

# ----------------------------------------------------------------------------------------------------------------
# Values. The TRAIN, DEV and HELDOUT pools are disjoint (tests/test_data_memory.py checks it).
POOLS = {
    "train": {
        "names": ["Anna", "Marco", "Priya", "Tom", "Sofia", "Kenji", "Lucia", "David", "Amara", "Jonas", "Elena",
                  "Omar", "Hannah", "Mateo", "Yuki", "Grace", "Pavel", "Leila", "Ben", "Chloe", "Arjun", "Nina",
                  "Felix", "Mei", "Carlos", "Ingrid", "Samuel", "Aisha", "Luca", "Freya", "Diego", "Rosa", "Tariq",
                  "Emma", "Viktor", "Zara", "Hugo", "Nadia", "Oscar", "Lena", "Kofi", "Maya", "Erik", "Julia",
                  "Ravi", "Clara", "Andrei", "Fatima", "Theo", "Ines"],
        "pets": ["Biscuit", "Pepper", "Mochi", "Luna", "Bruno", "Ziggy", "Olive", "Pickle", "Shadow", "Maple",
                 "Toffee", "Rocket", "Juniper", "Pippin", "Clover", "Waffles"],
        "species": ["dog", "cat", "rabbit", "parrot", "tortoise", "hamster"],
        "cities": ["Lisbon", "Toronto", "Krakow", "Osaka", "Melbourne", "Dublin", "Seville", "Denver", "Hamburg",
                   "Nairobi", "Valencia", "Glasgow", "Montreal", "Bergen", "Porto", "Austin", "Leeds", "Turin",
                   "Gothenburg", "Wellington", "Lyon", "Rotterdam", "Tallinn", "Boston"],
        "origins": [("a small town in Sicily", "sicily"), ("rural Norway", "norway"), ("Manila", "manila"),
                    ("the Scottish Highlands", "highlands"), ("Cape Town", "cape town"),
                    ("a village near Poznan", "poznan"), ("Buenos Aires", "buenos aires"), ("Kerala", "kerala"),
                    ("the outskirts of Seoul", "seoul"), ("Iceland", "iceland"), ("small-town Iowa", "iowa"),
                    ("Marseille", "marseille"), ("Cork", "cork"), ("Tasmania", "tasmania")],
        "jobs": [("a nurse", "work night shifts on a hospital ward", ["nurse", "ward"]),
                 ("a primary school teacher", "teach eight-year-olds to read and count", ["teacher", "teach"]),
                 ("a software developer", "write code for a banking app", ["developer", "code"]),
                 ("an electrician", "wire new houses", ["electrician", "wire"]),
                 ("a chef", "cook in a busy restaurant kitchen", ["chef", "cook"]),
                 ("an accountant", "keep the books for small firms", ["accountant", "books"]),
                 ("a bus driver", "drive the number 12 bus across town", ["bus driver", "bus"]),
                 ("a vet", "look after sick animals at a clinic", ["vet", "animals"]),
                 ("a graphic designer", "design logos and posters", ["designer", "logo"]),
                 ("a pharmacist", "hand out prescriptions at a pharmacy", ["pharmacist", "prescription"]),
                 ("a carpenter", "build kitchens and staircases", ["carpenter", "staircase"]),
                 ("a journalist", "write for the local newspaper", ["journalist", "newspaper"]),
                 ("a dentist", "fix people's teeth", ["dentist", "teeth"]),
                 ("a librarian", "run the children's section of a library", ["librarian", "library"]),
                 ("a physiotherapist", "help people recover from injuries", ["physio", "injur"]),
                 ("a pilot", "fly short-haul routes for an airline", ["pilot", "fly"]),
                 ("a plumber", "fix leaking pipes and boilers", ["plumber", "pipes"]),
                 ("a data analyst", "build sales reports for a retailer", ["analyst", "report"])],
        "employers": ["Northwind Freight", "Bluefern Software", "Halden Hospital", "Copperleaf Bakery",
                      "Greystone Bank", "Riverside Council", "Brightwater Labs", "Oakridge Motors",
                      "Silverline Airways", "Harbour View Hotel", "Pinecrest School", "Redkite Studios"],
        "hobbies": [("rock climbing", "climbing"), ("baking bread", "baking"), ("playing chess", "chess"),
                    ("birdwatching", "bird"), ("running marathons", "running"), ("knitting", "knitting"),
                    ("playing the guitar", "guitar"), ("gardening", "gardening"), ("sea swimming", "swimming"),
                    ("painting watercolours", "painting"), ("playing football", "football"),
                    ("photography", "photograph"), ("cycling", "cycling"), ("salsa dancing", "dancing")],
        "foods": ["ramen", "lasagne", "tacos", "sushi", "pierogi", "pad thai", "paella", "dumplings",
                  "mushroom risotto", "falafel", "chicken curry", "pancakes", "pho", "goulash"],
        "allergies": ["peanuts", "shellfish", "cats", "pollen", "penicillin", "strawberries", "wasps", "gluten"],
        "months": ["January", "March", "May", "July", "September", "November"],
    },
    "dev": {
        "names": ["Rafael", "Beatriz", "Tobias", "Keiko", "Malik", "Sigrid", "Nikolai", "Esperanza", "Callum",
                  "Anouk", "Dmitri", "Wanjiru", "Lorenzo", "Astrid", "Bashir", "Paloma", "Ciaran", "Henrike",
                  "Joaquin", "Saoirse", "Emeka", "Linnea", "Thiago", "Marisol", "Casimir", "Ottilie", "Ignacio",
                  "Rania", "Florian", "Yusuf", "Gwen", "Stellan", "Adaeze", "Matthias", "Noor", "Leopold",
                  "Eilidh", "Rasmus", "Valentina", "Soren"],
        "pets": ["Noodle", "Gizmo", "Marmalade", "Sprout", "Basil", "Figaro", "Domino", "Hazel", "Crumpet",
                 "Tinsel", "Pumpkin", "Radish"],
        "species": ["cat", "dog", "ferret", "budgie", "guinea pig", "iguana"],
        "cities": ["Ljubljana", "Halifax", "Utrecht", "Bologna", "Aarhus", "Bilbao", "Quebec City", "Tampere",
                   "Brisbane", "Cluj", "Galway", "Antwerp", "Zaragoza", "Innsbruck", "Reykjavik", "Seattle",
                   "Bristol", "Graz", "Trondheim", "Adelaide"],
        "origins": [("a fishing village in Galicia", "galicia"), ("the Faroe Islands", "faroe"), ("Lagos", "lagos"),
                    ("a mining town in Wales", "wales"), ("Okinawa", "okinawa"), ("the Atlas mountains", "atlas"),
                    ("Montevideo", "montevideo"), ("rural Alberta", "alberta"), ("Sardinia", "sardinia"),
                    ("a suburb of Gdansk", "gdansk"), ("Mombasa", "mombasa"), ("the Dolomites", "dolomites")],
        "jobs": [("a lift engineer", "spend my days fixing lifts in office towers", ["lift"]),
                 ("a paramedic", "ride around in an ambulance patching people up", ["paramedic", "ambulance"]),
                 ("a beekeeper", "look after forty hives of bees", ["beekeep", "hive"]),
                 ("a court interpreter", "translate for witnesses in court", ["interpret", "translat"]),
                 ("a tram driver", "drive trams through the city centre", ["tram"]),
                 ("a piano tuner", "tune pianos in people's living rooms", ["piano"]),
                 ("an air traffic controller", "guide planes in and out of the airport", ["air traffic", "planes"]),
                 ("a marine biologist", "study coral reefs", ["marine biolog", "coral"]),
                 ("a locksmith", "let people back into houses they locked themselves out of", ["locksmith", "locked"]),
                 ("a midwife", "help deliver babies", ["midwife", "babies"]),
                 ("a tailor", "alter suits and wedding dresses", ["tailor", "suits"]),
                 ("a firefighter", "put out fires", ["firefight", "fires"]),
                 ("an architect", "design schools and libraries", ["architect", "schools"]),
                 ("a radio presenter", "host a morning show on the radio", ["radio"])],
        "employers": ["Kestrel Lifts", "Ambermoor Trust", "Tidewater Aquarium", "Larkspur Theatre",
                      "Ironbridge Rail", "Foxglove Publishing", "Meadowlark Dairy", "Stonehaven Port",
                      "Wrenfield Observatory", "Cobalt Coast Ferries"],
        "hobbies": [("bouldering", "boulder"), ("making pottery", "pottery"), ("playing the cello", "cello"),
                    ("restoring old motorbikes", "motorbike"), ("fencing", "fencing"), ("beekeeping", "beekeep"),
                    ("writing poetry", "poet"), ("wild camping", "camping"), ("ice skating", "skating"),
                    ("building model trains", "model train"), ("kayaking", "kayak"), ("juggling", "juggl")],
        "foods": ["bibimbap", "moussaka", "empanadas", "shakshuka", "gnocchi", "laksa", "borscht", "jollof rice",
                  "fish and chips", "ceviche", "katsu curry", "spanakopita"],
        "allergies": ["hazelnuts", "dust mites", "latex", "kiwi fruit", "horses", "sesame"],
        "months": ["February", "April", "June", "August", "October", "December"],
    },
    # The fresh held-out pool: written after the chatbot was built on the dev users, shares nothing with train or
    # dev. Same shapes as above, except birthdays: every month is taken, so its birthdays are named days.
    "heldout": {
        "names": ["Aurelie", "Birgitta", "Constance", "Dagny", "Fenella", "Halima", "Ilse", "Jovana", "Kalani",
                  "Ludmila", "Marguerite", "Nkechi", "Orla", "Perpetua", "Rosalind", "Solveig", "Tamsin", "Ulrike",
                  "Vesna", "Wilhelmina", "Ximena", "Yolanda", "Zuzana", "Hortense", "Imelda",
                  "Alasdair", "Bartosz", "Cormac", "Desmond", "Eamon", "Gunnar", "Horatio", "Ivo", "Jarrah", "Kwame",
                  "Lachlan", "Nnamdi", "Osvaldo", "Piotr", "Quentin", "Rupert", "Tadeusz", "Ulysses", "Vikram",
                  "Wendell", "Xavier", "Yannick", "Zoltan", "Fergus", "Benedikt"],
        "pets": ["Pretzel", "Kumquat", "Bramble", "Nugget", "Sherbet", "Parsnip", "Marbles", "Truffle", "Pistachio",
                 "Sprocket", "Zephyr", "Gherkin", "Bagel", "Wasabi"],
        "species": ["greyhound", "cockatiel", "chinchilla", "hedgehog", "spaniel", "husky"],
        "cities": ["Tbilisi", "Valparaiso", "Kyoto", "Edinburgh", "Marrakesh", "Hobart", "Vilnius", "Dunedin",
                   "Winnipeg", "Nantes", "Leipzig", "Cordoba", "Aberdeen", "Salzburg", "Pittsburgh", "Oaxaca", "Riga",
                   "Cardiff", "Hanoi", "Lucerne"],
        "origins": [("a sheep farm in Patagonia", "patagonia"), ("the Azores", "azores"),
                    ("a hill town in Umbria", "umbria"), ("Accra", "accra"), ("Hokkaido", "hokkaido"),
                    ("the Orkney Islands", "orkney"), ("a border town in Texas", "texas"),
                    ("Newfoundland", "newfoundland"), ("Crete", "crete"), ("the Black Forest", "black forest"),
                    ("Dhaka", "dhaka"), ("a ski village in the Tatras", "tatra"), ("Lapland", "lapland"),
                    ("a port town in Brittany", "brittany")],
        "jobs": [("a sound engineer", "mix the sound for touring bands", ["sound engineer", "mix", "touring band"]),
                 ("a glassblower", "blow glass vases in a little workshop", ["glassblow", "glass"]),
                 ("a zookeeper", "feed the penguins and muck out the otter enclosure", ["zookeeper", "penguin",
                                                                                         "otter", "zoo"]),
                 ("a crane operator", "sit in a crane cab high above building sites", ["crane"]),
                 ("a florist", "arrange flowers for weddings and funerals", ["florist", "flower"]),
                 ("a cheesemaker", "turn milk into cheese on a farm", ["cheese"]),
                 ("a park ranger", "patrol the trails of a national park", ["ranger", "national park", "trails"]),
                 ("a clockmaker", "repair antique clocks", ["clock"]),
                 ("a tattoo artist", "put ink on people's skin", ["tattoo", "ink on"]),
                 ("a wind turbine technician", "climb wind turbines to keep them turning", ["turbine"]),
                 ("a hairdresser", "cut and colour hair in a salon", ["hairdress", "salon", "cut hair",
                                                                     "colour hair", "cut and colour"]),
                 ("a sommelier", "choose the wines for a fancy restaurant", ["sommelier", "wine"]),
                 ("a welder", "weld steel for bridges", ["weld"]),
                 ("a games tester", "play unfinished video games and report the bugs", ["tester", "video game",
                                                                                       "bugs"]),
                 ("a lifeguard", "keep an eye on swimmers at the public pool", ["lifeguard", "swimmer", "pool"]),
                 ("an optician", "test people's eyesight", ["optician", "eyesight", "eye test"])],
        "employers": ["Oxbow Logistics", "Halcyon Robotics", "Marrowgate Clinic", "Thistledown Bank",
                      "Saltmarsh Brewery", "Nettlecombe Press", "Gullwing Airlines", "Sablefield Insurance",
                      "Quarrystone Builders", "Ravenscar Hotels", "Larchwood Cinemas", "Emberlane Studios"],
        "hobbies": [("playing darts", "darts"), ("rowing on the river", "rowing"), ("stargazing", "stargaz"),
                    ("carving spoons out of wood", "carving"), ("learning Japanese", "japanese"),
                    ("geocaching", "geocach"), ("surfing", "surf"), ("playing the drums", "drum"),
                    ("growing chillies", "chilli"), ("doing crosswords", "crossword"),
                    ("shooting arrows at the archery club", "archery"), ("skateboarding", "skateboard"),
                    ("folding origami", "origami"), ("doing calligraphy", "calligraph")],
        "foods": ["biryani", "tagine", "poutine", "arancini", "carbonara", "banh mi", "tom yum soup", "khachapuri",
                  "cottage pie", "kimchi fried rice", "custard tarts", "enchiladas"],
        "allergies": ["mustard", "eggs", "celery", "soy", "lupin", "mango", "walnuts", "mussels"],
        "months": [],    # every month is in train or dev: the birthdays below are named days instead
        "birthdays": [("Christmas Eve", 24, "December"), ("New Year's Day", 1, "January"),
                      ("Halloween", 31, "October"), ("Valentine's Day", 14, "February"),
                      ("St Patrick's Day", 17, "March"), ("Bonfire Night", 5, "November"),
                      ("Burns Night", 25, "January"), ("New Year's Eve", 31, "December"),
                      ("Boxing Day", 26, "December"), ("leap day", 29, "February")],
    },
}
# More accepted answers for some held-out values (a reply may shorten or respell them); lowercase.
ALSO_ACCEPTED = {
    "Oxbow Logistics": ["oxbow"], "Halcyon Robotics": ["halcyon"], "Marrowgate Clinic": ["marrowgate"],
    "Thistledown Bank": ["thistledown"], "Saltmarsh Brewery": ["saltmarsh"], "Nettlecombe Press": ["nettlecombe"],
    "Gullwing Airlines": ["gullwing"], "Sablefield Insurance": ["sablefield"],
    "Quarrystone Builders": ["quarrystone"], "Ravenscar Hotels": ["ravenscar"], "Larchwood Cinemas": ["larchwood"],
    "Emberlane Studios": ["emberlane"],
    "surfing": ["surfer"], "growing chillies": ["chili"], "shooting arrows at the archery club": ["arrows"],
    "tagine": ["tajine"], "banh mi": ["bánh mì"], "tom yum soup": ["tom yum"], "kimchi fried rice": ["kimchi"],
    "custard tarts": ["custard tart", "pastel de nata", "pastéis de nata"], "cottage pie": ["shepherd's pie"],
    "eggs": ["egg"], "soy": ["soya"], "walnuts": ["walnut"], "mussels": ["mussel"], "mango": ["mangoes"],
    "Valentine's Day": ["valentine"], "St Patrick's Day": ["patrick"], "Bonfire Night": ["guy fawkes"],
    "Burns Night": ["burns supper"], "leap day": ["leap year"],
}

# ----------------------------------------------------------------------------------------------------------------
# Phrasings. Slots: {name} user name, {city}, {origin}, {job} (noun: "a nurse"), {job_do} (first person: "work
# night shifts ..."), {employer}, {hobby}, {food}, {pet}, {species}, {partner}, {rel} (wife/husband/partner),
# {sibling}, {sib} (brother/sister), {allergy}, {birthday} ("14 March"; in the HELDOUT pool a named day: "Halloween").
# "state": how the user says a fact; "ask": how the user asks for it back (never containing the value);
# "update": how the user says the fact changed ({city}/{job}/... is the NEW value).
PHRASINGS = {
    "train": {
        "name": {"state": ["Hi, my name is {name}.", "Hello! I'm {name}.", "Call me {name}, by the way.",
                           "Hey there, {name} speaking.", "I'm called {name}.", "You can call me {name}."],
                 "ask": ["What's my name?", "Do you remember my name?", "What is my name again?",
                         "Who am I?", "Can you tell me my name?"]},
        "home": {"state": ["I live in {city}.", "I'm based in {city}.", "My home is in {city}.",
                           "I've lived in {city} for a few years now.", "These days I live in {city}."],
                 "ask": ["Where do I live?", "Which city do I live in?", "Do you remember where I live?",
                         "Where is my home?", "What city am I based in?"],
                 "update": ["I just moved to {city}.", "Big news: I've moved to {city}.",
                            "I don't live there any more, I moved to {city} last month.",
                            "We've relocated to {city}."]},
        "origin": {"state": ["I'm originally from {origin}.", "I grew up in {origin}.", "I was born in {origin}."],
                   "ask": ["Where did I grow up?", "Where am I originally from?", "Where was I born?",
                           "Do you remember where I'm from?"]},
        "job": {"state": ["I work as {job}.", "I'm {job} by profession.", "My job is being {job}.",
                          "For work I {job_do}.", "I've been {job} for ten years."],
                "ask": ["What's my job?", "What do I do for work?", "What is my profession?",
                        "Do you remember my job?", "What do I work as?"],
                "update": ["I changed careers, I'm {job} now.", "I quit my old job and now I work as {job}.",
                           "New job! I'm {job} now.", "I've retrained and work as {job} these days."]},
        "employer": {"state": ["I work at {employer}.", "I'm employed by {employer}.", "My employer is {employer}."],
                     "ask": ["Where do I work?", "Who do I work for?", "Which company employs me?",
                             "What's the name of my employer?"],
                     "update": ["I left my old employer and joined {employer}.", "I started a new job at {employer}.",
                                "I now work at {employer}."]},
        "hobby": {"state": ["My hobby is {hobby}.", "In my free time I love {hobby}.", "I really enjoy {hobby}.",
                            "I spend my weekends {hobby}."],
                  "ask": ["What's my hobby?", "What do I like doing in my free time?",
                          "Do you remember my hobby?", "What do I do at weekends?"]},
        "food": {"state": ["My favourite food is {food}.", "I love eating {food}.", "My go-to meal is {food}.",
                           "I could eat {food} every day."],
                 "ask": ["What's my favourite food?", "What food do I love?", "Which dish do I like best?",
                         "Do you remember my favourite dish?"]},
        "pet": {"state": ["I have a {species} called {pet}.", "My {species}'s name is {pet}.",
                          "We have a pet {species} named {pet}.", "{pet} is my {species}."],
                "ask": ["What's my pet's name?", "What is my {species} called?", "Do you remember my pet's name?",
                        "What's the name of my {species}?"]},
        "partner": {"state": ["My {rel} is called {partner}.", "My {rel}'s name is {partner}.",
                              "I'm married to {partner}.", "{partner} is my {rel}."],
                    "ask": ["What's my {rel}'s name?", "Who is my {rel}?", "Do you remember my {rel}'s name?",
                            "What is my partner called?"]},
        "sibling": {"state": ["I have a {sib} called {sibling}.", "My {sib}'s name is {sibling}.",
                              "{sibling} is my {sib}."],
                    "ask": ["What's my {sib}'s name?", "What is my {sib} called?", "Do you remember my {sib}'s name?"]},
        "allergy": {"state": ["I'm allergic to {allergy}.", "I have an allergy to {allergy}.",
                              "I react badly to {allergy}."],
                    "ask": ["What am I allergic to?", "Do I have any allergies?", "What's my allergy?"]},
        "birthday": {"state": ["My birthday is on {birthday}.", "I was born on {birthday}.",
                               "My birthday is {birthday}."],
                     "ask": ["When is my birthday?", "What's my birthday?", "Do you remember when my birthday is?"]},
    },
    "dev": {
        "name": {"state": ["Morning! {name} here.", "{name}, pleased to meet you.", "The name's {name}.",
                           "Everyone just calls me {name}.", "Hiya, it's {name} again."],
                 "ask": ["What do you call me?", "Remind me who I am?", "How should you address me?",
                         "Who are you chatting with?"]},
        "home": {"state": ["Home for me is a little flat in {city}.", "I rent a place on the edge of {city}.",
                           "Our house is right in the middle of {city}.", "I've settled down in {city}."],
                 "ask": ["Which town is home for me?", "Where's my place?", "Where could someone find my flat?",
                         "Where am I living at the moment?"],
                 "update": ["Packed up everything and we're now settled in {city}.",
                            "Fresh start: the removal van dropped us in {city} yesterday.",
                            "Finally done with the move, {city} is home now."]},
        "origin": {"state": ["I was raised in {origin}.", "My childhood was spent in {origin}.",
                             "Back home in {origin}, where I'm from, it's winter now."],
                   "ask": ["Where did I spend my childhood?", "What part of the world do I come from?",
                           "Where are my roots?"]},
        "job": {"state": ["I {job_do}.", "Nine to five I'm {job}.", "I earn my living as {job}.",
                          "Been {job} since I left school."],
                "ask": ["What do I do all day?", "How do I pay the bills?", "What line of work am I in?",
                        "What's my trade?"],
                "update": ["I've handed in my notice, from Monday I'm {job}.",
                           "Career change done: these days I'm {job}.",
                           "Started over, and I now earn my living as {job}."]},
        "employer": {"state": ["I'm on the payroll at {employer}.", "I clock in at {employer} every morning.",
                               "I've been with {employer} for six years."],
                     "ask": ["Which firm pays my wages?", "What's the company I'm with?", "Whose payroll am I on?"],
                     "update": ["Switched firms, I'm with {employer} now.",
                                "Signed the contract, {employer} is my new workplace.",
                                "I've moved over to {employer}."]},
        "hobby": {"state": ["Most evenings you'll find me {hobby}.", "I'm hooked on {hobby}.",
                            "My guilty pleasure is {hobby}."],
                  "ask": ["How do I unwind?", "What keeps me busy after work?", "What's my pastime?"]},
        "food": {"state": ["Nothing beats a plate of {food}.", "If I had one last meal, it'd be {food}.",
                           "I'm crazy about {food}."],
                 "ask": ["What's the dish I can't get enough of?", "What should you cook for me?",
                         "Which meal do I rave about?"]},
        "pet": {"state": ["We adopted a three-legged {species} last spring, we named it {pet}.",
                          "There's a {species} at home, {pet}, who runs the household.",
                          "{pet}, my {species}, just knocked over my tea."],
                "ask": ["Who's the animal in my household?", "Tell me my pet's name.",
                        "Which animal shares my home, and what is its name?"]},
        "partner": {"state": ["{partner} and I have been together for twelve years.",
                              "My {rel} {partner} is cooking tonight.",
                              "Date night with {partner}, my {rel}, tomorrow."],
                    "ask": ["Who's my other half?", "Who do I share my life with?", "Who am I going out with?"]},
        "sibling": {"state": ["My little {sib} {sibling} is visiting this week.",
                              "Growing up, {sibling}, my {sib}, and I shared a room."],
                    "ask": ["Who's my {sib}?", "Which sibling did I mention?", "Say the name of my {sib}."]},
        "allergy": {"state": ["{allergy} and I do not get along, I break out in hives.",
                              "I have to stay away from {allergy}, doctor's orders."],
                    "ask": ["What do I need to avoid?", "What triggers my allergy?"]},
        "birthday": {"state": ["I'll be blowing out candles on {birthday}.", "{birthday} is my big day every year."],
                     "ask": ["Which day should you wish me a happy birthday?", "When do I celebrate getting older?"]},
    },
    # the fresh held-out phrasings: casual, indirect, and the pet and the hobby can change too
    "heldout": {
        "name": {"state": ["Hey! {name} on this end.", "Oh, I never introduced myself: {name}.",
                           "{name} is what my parents went with, so that's me.", "Greetings from {name}!",
                           "Before I forget, my name's {name}.", "Yo, {name} reporting in."],
                 "ask": ["Do you know who this is?", "Which name did I give you?", "Say my name back to me.",
                         "What name did I introduce myself with?", "How would you greet me by name?"]},
        "home": {"state": ["The neighbours here in {city} are lovely.",
                           "Rent in {city} keeps going up and I keep paying it.",
                           "Our terrace house in {city} could do with a lick of paint.",
                           "My flat looks out over the rooftops of {city}.",
                           "I'm typing this from my kitchen table in {city}."],
                 "ask": ["Which city do I wake up in?", "Where's my address these days?",
                         "Where do I come home to at night?", "In which city have I made my home?",
                         "Whereabouts is my home?"],
                 "update": ["We've just got the keys to a new place in {city}!",
                            "Said goodbye to the old flat, I'm in {city} now.",
                            "Work sent me to {city}, so that's where I live now.",
                            "Moving day is over, we're unpacking boxes in {city}."]},
        "origin": {"state": ["I spent the first eighteen years of my life in {origin}.",
                             "My accent gives away that I'm from {origin}.",
                             "Every summer I fly back to {origin} to see my folks.",
                             "Little me ran around barefoot in {origin}."],
                   "ask": ["Where did I start out in life?", "What's my hometown?", "Where was I as a kid?",
                           "Which part of the world did I grow up in?"]},
        "job": {"state": ["Work-wise, I {job_do}.", "By trade I'm {job}.", "Monday to Friday I {job_do}.",
                          "Technically I'm {job}, but mostly I drink coffee.",
                          "People are always surprised that I'm {job}."],
                "ask": ["What's my occupation?", "How do I earn my money?", "What am I paid to do?",
                        "What's my day job?", "What did I say my work was?"],
                "update": ["Big change: I left all that behind and became {job}.",
                           "As of this month I'm {job}, the old job is history.",
                           "Retrained over the winter, so now I {job_do}.",
                           "Totally new career: I {job_do} now."]},
        "employer": {"state": ["My badge says {employer} on it.", "I've got a desk by the window at {employer}.",
                               "The boss at {employer} wants me in early tomorrow.",
                               "Payday at {employer} can't come soon enough."],
                     "ask": ["Which company signs my paycheques?", "Who's my employer at the moment?",
                             "Which organisation am I working for?", "What's the name of the outfit I work for?"],
                     "update": ["Last day at the old place was Friday; on Monday I start at {employer}.",
                                "{employer} made me an offer I couldn't refuse, so I've switched.",
                                "New badge, new desk: I'm at {employer} now."]},
        "hobby": {"state": ["Saturdays are for {hobby}, no exceptions.",
                            "Lately I've been getting really into {hobby}.",
                            "My friends tease me about how much time I spend {hobby}.",
                            "Nothing clears my head like {hobby}."],
                  "ask": ["What do I do for fun?", "What do I get up to on my days off?",
                          "What's the thing I do to switch off?", "Any idea what my hobby is?"],
                  "update": ["I've given up my old hobby, it's all {hobby} now.",
                             "Out with the old hobby: my new obsession is {hobby}.",
                             "I got bored of my old pastime and took up {hobby} instead."]},
        "food": {"state": ["Put {food} in front of me and I'm happy.",
                           "Whenever it's my turn to pick dinner, it's {food}.",
                           "My comfort food has always been {food}.", "I'd cross town on foot for decent {food}."],
                 "ask": ["What would you cook to cheer me up?", "What's my favourite thing to eat?",
                         "If you ordered dinner for me, what would you get?", "Which dish is the way to my heart?"]},
        "pet": {"state": ["Sorry if I'm slow to reply, my {species} {pet} wants attention.",
                          "Our {species} {pet} turned five today and got a special treat.",
                          "I adopted a {species} from the shelter; {pet} has been spoilt rotten ever since.",
                          "{pet}, our {species}, has learned to open the kitchen cupboard."],
                "ask": ["What did I name my {species}?", "What's the name of the animal I live with?",
                        "Remind me what my pet answers to?"],
                "update": ["Sad news, our old pet died last month. We've since adopted a {species} called {pet}.",
                           "After losing our last pet we swore no more animals, but then {pet} the {species} "
                           "arrived.",
                           "My ex kept the old pet, so I've got a {species} of my own now, {pet}."]},
        "partner": {"state": ["{partner} and I are celebrating our anniversary on Friday.",
                              "My {rel}, {partner}, thinks I talk to you too much.",
                              "I met my {rel} {partner} at a friend's barbecue."],
                    "ask": ["Who's the love of my life?", "What's the name of the person I'm with?",
                            "Who am I in a relationship with?"]},
        "sibling": {"state": ["{sibling} is my twin {sib}, older by four minutes.",
                              "My big {sib} {sibling} just had a baby!",
                              "Me and my {sib} {sibling} still argue over who's mum's favourite."],
                    "ask": ["What's my sibling called?", "Who did I say my {sib} was?",
                            "Have I got a brother or a sister, and what's their name?"]},
        "allergy": {"state": ["Even a trace of {allergy} and my throat swells up.",
                              "I carry an EpiPen because of {allergy}.",
                              "Restaurants always get a warning from me about {allergy}."],
                    "ask": ["Is there anything I can't eat?", "Which ingredient is dangerous for me?",
                            "What's off the menu for me, medically?"]},
        "birthday": {"state": ["I was a {birthday} baby, which makes for great parties.",
                               "My birthday lands on {birthday}, of all days.",
                               "On {birthday} I get a cake and another grey hair."],
                     "ask": ["Which day of the year is my birthday?", "On what day should you send me a card?",
                             "When should you sing happy birthday to me?"]},
    },
}
# More training phrasings, for the chats only (the benchmark's train users keep the first edition's): facts said in
# passing, inside longer sentences, and questions that share few words with the statement, so that the model learns
# to match a question to a fact by meaning rather than by a repeated word. Written apart from the dev and held-out
# pools (tests/test_data_memory.py checks that no dev or held-out phrasing, or its longest fixed words, is here).
MORE_TRAIN_PHRASINGS = {
    "name": {"state": ["{name} here, nice to chat with you.", "My friends call me {name}.",
                       "Hello, this is {name} typing.", "Quick intro: {name}, that's me.", "I go by {name}.",
                       "It's {name}, we spoke last week.", "Hey! {name} from the other day."],
             "ask": ["Remember what I'm called?", "Who's talking to you?", "How did I introduce myself?",
                     "Do you know my name?", "What should you call me?"]},
    "home": {"state": ["My flat overlooks the river in {city}.", "I commute across {city} every day.",
                       "{city} has been home for a while now.", "Life in {city} is pretty good.",
                       "Our street in {city} is very quiet.", "The buses in {city}, where I live, are always late."],
             "ask": ["What city do I call home?", "Where do I stay these days?", "Remind me where I live.",
                     "Where would a letter to me go?", "Which city is my home base?"],
             "update": ["Just got the keys to a new flat in {city}.", "Moving day is over, I'm a {city} resident now.",
                        "I left my old city behind, {city} is where I live now.",
                        "We sold the house, and we're renting in {city} now."]},
    "origin": {"state": ["As a kid I ran around {origin}.", "My family comes from {origin}, that's where I grew up.",
                         "I left {origin} when I was eighteen.", "My parents still live in {origin}, where I grew up."],
               "ask": ["In what place did I spend my early years?", "Where was home when I was a kid?",
                       "Where does my family come from?", "Which place did I grow up in?"]},
    "job": {"state": ["I'm {job}, it pays the rent.", "Work is busy, being {job} is never dull.",
                      "At the moment I'm {job}.", "Most days I {job_do}.", "I {job_do}, which I love.",
                      "Trained as {job} and still doing it."],
            "ask": ["What do I do for a living?", "Tell me what I do at work.", "What kind of work do I do?",
                    "What do I do when I'm at work?", "Which career did I tell you about?"],
            "update": ["Big career move: I'm {job} as of this week.", "I switched careers and became {job}.",
                       "Said goodbye to my old job, now I'm {job}."]},
    "employer": {"state": ["I've got a job at {employer}.", "{employer} is where I work.",
                           "My office is at {employer}.", "I've worked for {employer} since 2019."],
                 "ask": ["Which company do I work for?", "Who's my employer?", "Where's my workplace?",
                         "Which organisation am I at?"],
                 "update": ["Starting Monday I'm at {employer}.", "I got hired by {employer}!",
                            "Changed employers: {employer} took me on."]},
    "hobby": {"state": ["Weekends are for {hobby}, for me.", "I've been getting into {hobby} lately.",
                        "Nothing relaxes me like {hobby}.", "After work I unwind by {hobby}."],
              "ask": ["What's my favourite way to spend a Saturday?", "What's something I do to relax?",
                      "How do I spend my spare time?", "What am I into outside work?"]},
    "food": {"state": ["I'd pick {food} over anything.", "{food} is my comfort food.", "Give me {food} and I'm happy.",
                       "I order {food} whenever I can."],
             "ask": ["What do I like to eat most?", "What's my comfort food?", "Which food would make me happy?",
                     "What should I order for dinner, knowing my taste?"]},
    "pet": {"state": ["My {species} {pet} is asleep on my lap.", "I share my flat with a {species} named {pet}.",
                      "{pet} the {species} woke me up at dawn.", "Our {species}, {pet}, chewed my shoes again."],
            "ask": ["What's my animal called?", "Who's my furry friend?", "What's the name of my pet?",
                    "Remind me what my pet is called."]},
    "partner": {"state": ["I'm going to the cinema with {partner}, my {rel}.", "{partner}, my {rel}, says hello.",
                          "My {rel} {partner} and I just got back from holiday.", "I live with my {rel}, {partner}."],
                "ask": ["Who's my significant other?", "Who is my partner?", "Who's my sweetheart?",
                        "Who's my {rel}?"]},
    "sibling": {"state": ["My {sib} {sibling} is getting married soon.",
                          "I'm visiting my {sib}, {sibling}, this weekend.", "{sibling}, my {sib}, lives abroad."],
                "ask": ["Who's my sibling?", "What's my {sib} called again?",
                        "Do I have a brother or a sister, and what's their name?"]},
    "allergy": {"state": ["I can't go near {allergy}, I'm allergic.", "Doctors told me I'm allergic to {allergy}.",
                          "I always carry an antihistamine because of {allergy}."],
                "ask": ["What can't I go near?", "Which allergy do I have?", "What makes me react?",
                        "Is there anything I'm allergic to?"]},
    "birthday": {"state": ["I turn a year older on {birthday}.", "Mark {birthday} in your calendar, it's my birthday.",
                           "My birthday falls on {birthday}."],
                 "ask": ["When's my birthday?", "On which day was I born?", "What day is my birthday on?"]},
}
# Never-said questions for the fresh held-out users: about things no user of any pool ever states.
NEVER_SAID = {"heldout": ["What car do I drive?", "Which football team do I support?", "What's my shoe size?",
                          "How many kids have I got?", "What's my blood type?", "What's my middle name?",
                          "Which school did I go to?", "What colour are my eyes?", "What's my phone number?",
                          "How tall am I?"]}
# Never-said questions of the training chats, about things no pool has (question, what the reply says is missing)
NEVER_SAID_TRAIN = [("What's my favourite colour?", "your favourite colour"),
                    ("Which languages do I speak?", "which languages you speak"), ("How old am I?", "your age"),
                    ("What's my favourite film?", "your favourite film"), ("What's my dad's name?", "your dad's name"),
                    ("Which instrument do I play?", "whether you play an instrument"),
                    ("What did I study at university?", "what you studied"), ("What's my star sign?", "your star sign"),
                    ("Which band do I like best?", "your favourite band"),
                    ("What's my email address?", "your email address")]
# the word for the partner and the sibling follows the name: FEMALE lists the women's names of all pools
PARTNER_RELS = {"train": {"f": ["wife", "girlfriend", "partner"], "m": ["husband", "boyfriend", "partner"]},
                "dev": {"f": ["wife", "fiancée"], "m": ["husband", "fiancé"]},
                "heldout": {"f": ["wife", "girlfriend"], "m": ["husband", "boyfriend"]}}
SIBLING_RELS = {"f": "sister", "m": "brother"}
FEMALE = {"Anna", "Priya", "Sofia", "Lucia", "Amara", "Elena", "Hannah", "Yuki", "Grace", "Leila", "Chloe", "Nina",
          "Mei", "Ingrid", "Aisha", "Freya", "Rosa", "Emma", "Zara", "Nadia", "Lena", "Maya", "Julia", "Clara",
          "Fatima", "Ines", "Beatriz", "Keiko", "Sigrid", "Esperanza", "Anouk", "Wanjiru", "Astrid", "Paloma",
          "Saoirse", "Henrike", "Linnea", "Marisol", "Ottilie", "Rania", "Gwen", "Adaeze", "Noor", "Eilidh",
          "Valentina",
          "Aurelie", "Birgitta", "Constance", "Dagny", "Fenella", "Halima", "Ilse", "Jovana", "Kalani", "Ludmila",
          "Marguerite", "Nkechi", "Orla", "Perpetua", "Rosalind", "Solveig", "Tamsin", "Ulrike", "Vesna",
          "Wilhelmina", "Ximena", "Yolanda", "Zuzana", "Hortense", "Imelda"}
UPDATABLE = ["home", "job", "employer"]                     # what changes for train and dev users
UPDATABLE_HELDOUT = UPDATABLE + ["pet", "hobby"]             # the fresh held-out users can also get a new pet/hobby

# How the assistant answers (training only). {v} the value as the answer states it.
ANSWERS = {
    "name": ["Your name is {v}.", "You're {v}.", "You told me your name is {v}.", "You said your name is {v}."],
    "home": ["You live in {v}.", "You're based in {v}.", "You told me you live in {v}."],
    "origin": ["You're originally from {v}.", "You grew up in {v}.", "You told me you come from {v}."],
    "job": ["You work as {v}.", "You're {v}.", "You told me you work as {v}."],
    "job_do": ["You {v}.", "You told me you {v}."],
    "employer": ["You work at {v}.", "You're employed by {v}.", "You told me you work for {v}."],
    "hobby": ["You enjoy {v}.", "Your hobby is {v}.", "You told me you love {v}."],
    "food": ["Your favourite food is {v}.", "You love {v}.", "You told me you love {v}."],
    "pet": ["Your {species} is called {v}.", "Your pet {species}'s name is {v}.", "It's {v}, your {species}."],
    "partner": ["Your {rel} is called {v}.", "Your {rel}'s name is {v}.", "It's {v}, your {rel}."],
    "sibling": ["Your {sib} is called {v}.", "Your {sib}'s name is {v}.", "That's {v}, your {sib}."],
    "allergy": ["You're allergic to {v}.", "You have an allergy to {v}.", "You told me you react to {v}."],
    "birthday": ["Your birthday is on {v}.", "It's on {v}.", "You told me your birthday is {v}."],
}
UPDATE_ANSWERS = {  # the newest value, and the old one named as past
    "home": ["You live in {v} now; you moved there from {old}.", "You live in {v} now.",
             "You moved from {old} to {v}, so {v}."],
    "job": ["You're {v} now; before that you were {old}.", "You work as {v} now.",
            "You changed jobs: you're {v} now."],
    "job_do": ["You {v} now; before that you were {old}.", "These days you {v}.", "You changed jobs: now you {v}."],
    "employer": ["You work at {v} now; you left {old}.", "You're at {v} now.",
                 "You moved from {old} to {v}, so you work at {v}."],
}
# What the user has not said, as the assistant names it when it declines.
NOT_TOLD = {"name": "your name", "home": "where you live", "origin": "where you grew up",
            "job": "what you do for a living", "employer": "where you work", "hobby": "what your hobbies are",
            "food": "your favourite food",
            "pet": "whether you have a pet", "partner": "whether you have a partner",
            "sibling": "whether you have any siblings", "allergy": "whether you have any allergies",
            "birthday": "your birthday"}
ABSTAIN_REPLIES = ["You haven't told me {what}, so I don't know.", "I don't know: you haven't told me {what}.",
                   "You didn't mention {what} in our conversation. Would you like to tell me?",
                   "I'm not sure, you haven't told me {what} yet.", "You never told me {what}."]

# Small talk. TRAIN: (user, assistant) pairs for the chats (openings and distractor notes). DEV and HELDOUT: user
# turns only, for the evaluator to put between the facts and the questions (memory_eval.json's small_talk and
# small_talk_heldout).
SMALL_TALK = {
    "train": [
        ("How's your day going?", "It's going well, thanks for asking! How about yours?"),
        ("It's raining again here.", "Sounds like a good day for staying in with a warm drink."),
        ("Any tips for sleeping better?",
         "Keep a regular bedtime, avoid screens late at night and keep the room cool."),
        ("I'm bored.", "Maybe try a short walk, a puzzle or a new recipe?"),
        ("Can you recommend a good book?", "You might enjoy a classic adventure story, such as Treasure Island."),
        ("What's a quick breakfast idea?", "Porridge with fruit, or yoghurt with granola, takes five minutes."),
        ("I finally finished my to-do list.", "Well done! That's a satisfying feeling."),
        ("Tell me a fun fact.", "Octopuses have three hearts."),
        ("What should I watch tonight?", "How about a light comedy, or a nature documentary?"),
        ("I had a long week.", "Sorry to hear that. I hope you get some rest this weekend."),
        ("Do you like music?", "I don't listen to music, but I'm happy to talk about it!"),
        ("The traffic was awful this morning.", "That's frustrating. I hope the ride home is quicker."),
        ("How do I make my coffee less bitter?", "Use slightly cooler water and a coarser grind."),
        ("Thanks for the help earlier.", "You're welcome! Happy to help."),
        ("What's a good stretch for my back?", "A gentle cat-cow stretch on hands and knees is a good start."),
        ("I'm trying to drink more water.", "Good plan! Keeping a bottle on your desk helps."),
        ("It's so hot today.", "Stay in the shade and drink plenty of water."),
        ("Give me a word that rhymes with cat.", "Hat."),
        ("I can't decide what to cook.", "A simple pasta with tomatoes and garlic is hard to beat."),
        ("What's the weather like on Mars?", "Cold and dusty: on average about minus 60 degrees Celsius."),
    ],
    "dev": [
        "Do clouds weigh anything?", "I just spilled coffee all over my notes.", "Why do cats purr?",
        "What's a polite way to decline an invitation?", "My phone battery dies so fast lately.",
        "Is it better to stretch before or after a run?", "How long should I boil an egg?",
        "Can you explain what a leap year is?", "Ugh, Mondays.", "What's the tallest mountain in Africa?",
        "Suggest a board game for four people.", "Why is the sky blue?", "How do plants drink water?",
        "I keep forgetting where I put my keys.", "What's a good name for a sourdough starter?",
        "Explain compound interest in one sentence.", "Is a tomato a fruit?", "Any ideas for a rainy Sunday?",
        "How many bones are in the human body?", "Tell me something nice.", "What's the capital of Canada?",
        "I'm thinking of learning to juggle.", "Why do we yawn?", "How far away is the Moon?",
        "What rhymes with orange?", "I've got a job interview next week, any advice?",
        "How do I get rid of hiccups?", "What's the difference between a frog and a toad?",
        "Recommend a podcast topic.", "It's my day off and I don't know what to do.",
    ],
    "heldout": [
        "My neighbour's dog barked all night.", "Why does bread go stale?",
        "Lol, I just waved at someone who wasn't waving at me.", "How do noise-cancelling headphones work?",
        "What's the difference between weather and climate?", "Can you give me a riddle?", "I burnt the toast again.",
        "Is it rude to recline your seat on a plane?", "Why do onions make you cry?", "How do I fold a fitted sheet?",
        "The printer jammed three times this morning.", "What's the longest river in South America?",
        "Any tips for keeping houseplants alive?", "Why do we get goosebumps?",
        "How many hours of sleep does an adult need?", "Give me a tongue twister.",
        "Hmm, I can't think of anything to say.", "What's the best way to learn to whistle?", "How do magnets work?",
        "I saw a rainbow on the way in.", "Should I paint the hallway green or grey?", "What's a haiku?",
        "Why are flamingos pink?", "ok cool", "How does a microwave heat food?",
        "I can never remember if it's affect or effect.", "What year did people first walk on the Moon?",
        "Is dark chocolate actually good for you?", "My tea has gone cold again.", "Name three famous painters.",
        "Why do leaves change colour in autumn?", "It's so windy out today.", "Do fish sleep?",
        "What's the quickest way to cool down a hot drink?", "brb, someone's at the door",
        "Honestly this week has flown by.",
    ],
}
# General questions for conversations whose note is beside the point (TRAIN only): the reply answers normally.
GENERAL_QA = [
    ("What's the capital of Japan?", "Tokyo."), ("How many days are in a week?", "Seven."),
    ("What is 12 times 3?", "36."), ("What colour do you get by mixing blue and yellow?", "Green."),
    ("How many legs does a spider have?", "Eight."), ("What's the largest ocean?", "The Pacific Ocean."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."), ("What's the boiling point of water?",
                                                              "100 degrees Celsius at sea level."),
    ("How many minutes are in an hour?", "Sixty."), ("What's the opposite of cold?", "Hot."),
    ("Which planet is closest to the Sun?", "Mercury."), ("What is 15 plus 27?", "42."),
    ("What language is spoken in Brazil?", "Portuguese."), ("How many continents are there?", "Seven."),
    ("What's the chemical symbol for gold?", "Au."), ("What do bees make?", "Honey."),
    ("Can you say hello in Spanish?", "Hola!"), ("What's the square root of 81?", "9."),
    ("Tell me a synonym for happy.", "Cheerful."), ("How many sides does a hexagon have?", "Six."),
    ("What's the freezing point of water?", "0 degrees Celsius."), ("Which animal is the largest mammal?",
                                                                     "The blue whale."),
    ("What is 100 divided by 4?", "25."), ("What's the first month of the year?", "January."),
]


# ----------------------------------------------------------------------------------------------------------------
# A synthetic person: values for every attribute, drawn from one pool
def ordinal_day(rng):
    return rng.randint(1, 28)


def make_person(rng, pool, name):
    p = POOLS[pool]
    others = [n for n in p["names"] if n != name]
    job, job_do, job_key = rng.choice(p["jobs"])
    hobby, hobby_key = rng.choice(p["hobbies"])
    if p["months"]:
        day, month = ordinal_day(rng), rng.choice(p["months"])
        birthday = f"{day} {month}"
    else:   # the fresh held-out pool names its birthdays ("Halloween")
        birthday, day, month = rng.choice(p["birthdays"])
    partner, sibling = rng.sample(others, 2)
    origin, origin_key = rng.choice(p["origins"])
    rel = rng.choice(PARTNER_RELS[pool]["f" if partner in FEMALE else "m"])
    return {
        "name": name, "city": rng.choice(p["cities"]), "origin": origin, "origin_key": origin_key,
        "job": job, "job_do": job_do, "job_key": job_key, "employer": rng.choice(p["employers"]),
        "hobby": hobby, "hobby_key": hobby_key, "food": rng.choice(p["foods"]), "pet": rng.choice(p["pets"]),
        "species": rng.choice(p["species"]), "partner": partner, "rel": rel, "sibling": sibling,
        "sib": SIBLING_RELS["f" if sibling in FEMALE else "m"], "allergy": rng.choice(p["allergies"]),
        "birthday": birthday, "day": day, "month": month,
    }


def new_value(rng, pool, person, attr):
    """A different value for an updatable attribute -> the slots that change."""
    p = POOLS[pool]
    if attr == "home":
        return {"city": rng.choice([c for c in p["cities"] if c != person["city"]])}
    if attr == "employer":
        return {"employer": rng.choice([e for e in p["employers"] if e != person["employer"]])}
    if attr == "pet":   # a new pet (the old one is gone), maybe of another species
        return {"pet": rng.choice([x for x in p["pets"] if x != person["pet"]]), "species": rng.choice(p["species"])}
    if attr == "hobby":
        hobby, key = rng.choice([h for h in p["hobbies"] if h[0] != person["hobby"]])
        return {"hobby": hobby, "hobby_key": key}
    job, job_do, key = rng.choice([j for j in p["jobs"] if j[0] != person["job"]])
    return {"job": job, "job_do": job_do, "job_key": key}


# Still more training phrasings, about 40 statements and 20 questions for each kind of fact and 40 more never-said
# questions, in data/memory_train_phrasings.json (written for this project apart from the dev and held-out pools;
# the same test checks them). Read with the ones above, they teach the model to read a note in many wordings.
MORE_TRAIN_FILE = HERE / "memory_train_phrasings.json"


def add_more_train_phrasings(path=MORE_TRAIN_FILE):
    more = json.loads(path.read_text(encoding="utf-8"))
    NEVER_SAID_TRAIN.extend(tuple(pair) for pair in more.pop("never_said"))
    for attr, kinds in more.items():
        for kind, templates in kinds.items():
            MORE_TRAIN_PHRASINGS[attr][kind] = MORE_TRAIN_PHRASINGS[attr].get(kind, []) + templates


add_more_train_phrasings()


def phrasings(pool, attr, kind, more=False):   # more: with MORE_TRAIN_PHRASINGS (the training chats)
    return PHRASINGS[pool][attr][kind] + (MORE_TRAIN_PHRASINGS[attr].get(kind, []) if more else [])


def say_fact(rng, pool, attr, person, kind="state", more=False):
    """(the user's sentence, the phrasing template used) for a fact about `person`."""
    templates = phrasings(pool, attr, kind, more)
    template = rng.choice(templates)
    text = template.format(**person)
    return text[:1].upper() + text[1:], template


def ask_fact(rng, pool, attr, person, more=False):
    template = rng.choice(phrasings(pool, attr, "ask", more))
    return template.format(**person), template


def answer_key(attr, stated_with):
    """Which answers fit: a job stated as an activity ("now I tune pianos") is answered as an activity ("job_do")."""
    return "job_do" if attr == "job" and stated_with and "{job_do}" in stated_with else attr


def answer_value(attr, person, stated_with):
    """The value as the answer states it; the job stated as an activity is answered as an activity."""
    if answer_key(attr, stated_with) == "job_do":
        return person["job_do"]
    return {"name": person["name"], "home": person["city"], "origin": person["origin"], "job": person["job"],
            "employer": person["employer"], "hobby": person["hobby"], "food": person["food"], "pet": person["pet"],
            "partner": person["partner"], "sibling": person["sibling"], "allergy": person["allergy"],
            "birthday": person["birthday"]}[attr]


def accepted(attr, person, also=None):
    """Lowercase strings, any of which in a reply counts as recalling the fact. `also`: more forms for some values
    (ALSO_ACCEPTED; data/make_memory_proxy.py passes its own)."""
    value = answer_value(attr, person, None)
    if attr == "job":
        keys = list(person["job_key"])   # the trade's name, and a word of the activity ("lift", "babies")
    elif attr == "hobby":
        keys = [person["hobby_key"].lower()]
    elif attr == "birthday":
        m, d = person["month"].lower(), person["day"]
        suffix = "th" if 11 <= d <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
        keys = [f"{d} {m}", f"{m} {d}", f"{d}{suffix} {m}", f"{m} {d}{suffix}", f"{d}{suffix} of {m}"]
        if not value[:1].isdigit():   # a named day ("New Year's Day"): its name, with or without ', or its date
            keys = list(dict.fromkeys([value.lower(), value.lower().replace("'", "")])) + keys
    elif attr == "origin":
        keys = [person["origin_key"]]
    elif attr == "food" and value.endswith("s") and " " not in value:
        keys = [value.lower(), value[:-1].lower()]
    else:
        keys = [value.lower()]
    return keys + [k for k in (ALSO_ACCEPTED if also is None else also).get(value, []) if k not in keys]


# ----------------------------------------------------------------------------------------------------------------
# Training conversations (TRAIN pool only)
def reply_for(rng, attr, person, statement_template):
    if attr == "partner" and "{rel}" not in statement_template:
        person = dict(person, rel="partner")   # "I'm married to Ana" says nothing about the word for her
    v = answer_value(attr, person, statement_template)
    slots = {k: person[k] for k in ("species", "rel", "sib")}
    return rng.choice(ANSWERS[answer_key(attr, statement_template)]).format(v=v, **slots)


def distractors(rng, person, exclude, k):
    """Up to k other earlier user messages: other facts about the same person, or small talk."""
    out = []
    attrs = [a for a in PHRASINGS["train"] if a not in exclude]
    for _ in range(k):
        if rng.random() < 0.6 and attrs:
            attr = attrs.pop(rng.randrange(len(attrs)))
            out.append(say_fact(rng, "train", attr, person, more=True)[0])
        else:
            out.append(rng.choice(SMALL_TALK["train"])[0])
    return out


def opening(rng):
    """An optional short small-talk exchange before the memory question (a third of the conversations)."""
    if rng.random() < 1 / 3:
        user, assistant = rng.choice(SMALL_TALK["train"])
        return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return []


def interleave(rng, relevant, others):
    """Earlier messages in a plausible time order: the relevant ones keep their own order, others fall around them."""
    out = list(relevant)
    for text in others:
        out.insert(rng.randint(0, len(out)), text)
    return out


def with_another_fact(rng, person, statement, exclude):
    """Sometimes (a third of the time) two facts in one message, as people write: "Hi, I'm Anna. I live in Porto." """
    if rng.random() < 1 / 3:
        other = distractors(rng, person, exclude, 1)[0]
        return f"{other} {statement}" if rng.random() < 0.5 else f"{statement} {other}"
    return statement


def chat_recall(rng, person):
    attr = rng.choice(list(PHRASINGS["train"]))
    statement, template = say_fact(rng, "train", attr, person, more=True)
    statement = with_another_fact(rng, person, statement, {attr})
    note = interleave(rng, [statement], distractors(rng, person, {attr}, rng.randint(0, OTHER_LINES)))
    question, _ = ask_fact(rng, "train", attr, person, more=True)
    turns = [(memory_message(note, question), reply_for(rng, attr, person, template))]
    if rng.random() < 0.25:   # a second question in the same conversation, with its own note
        attr2 = rng.choice([a for a in PHRASINGS["train"] if a != attr])
        statement2, template2 = say_fact(rng, "train", attr2, person, more=True)
        note2 = interleave(rng, [statement2], distractors(rng, person, {attr, attr2}, rng.randint(0, 1)))
        question2, _ = ask_fact(rng, "train", attr2, person, more=True)
        turns.append((memory_message(note2, question2), reply_for(rng, attr2, person, template2)))
    return turns


def chat_update(rng, person):
    attr = rng.choice(UPDATABLE)
    old_statement, _ = say_fact(rng, "train", attr, person, more=True)
    old_statement = with_another_fact(rng, person, old_statement, {attr})
    old = answer_value(attr, person, None)
    newer = dict(person, **new_value(rng, "train", person, attr))
    new_statement, new_template = say_fact(rng, "train", attr, newer, "update", more=True)
    note = interleave(rng, [old_statement, new_statement],
                    distractors(rng, person, {attr}, rng.randint(0, OTHER_LINES - 1)))
    question, _ = ask_fact(rng, "train", attr, newer, more=True)
    if rng.random() < 0.4:
        question = question.rstrip("?") + " now?"
    reply = rng.choice(UPDATE_ANSWERS[answer_key(attr, new_template)]).format(
        v=answer_value(attr, newer, new_template), old=old)
    return [(memory_message(note, question), reply)]


def chat_abstain(rng, person, with_note=True):
    attrs = list(PHRASINGS["train"])
    missing = rng.choice(attrs)
    told = rng.sample([a for a in attrs if a != missing], rng.randint(1, OTHER_LINES))
    note = [say_fact(rng, "train", a, person, more=True)[0] for a in told] if with_note else []
    if with_note and rng.random() < 0.3:
        note.insert(rng.randint(0, len(note)), rng.choice(SMALL_TALK["train"])[0])
    if rng.random() < 0.3:   # something no user of any pool is ever asked about
        question, what = rng.choice(NEVER_SAID_TRAIN)
    else:
        question, what = ask_fact(rng, "train", missing, person, more=True)[0], NOT_TOLD[missing]
    reply = rng.choice(ABSTAIN_REPLIES).format(what=what)
    return [(memory_message(note, question), reply)]


def chat_beside_the_point(rng, person):
    note = distractors(rng, person, set(), rng.randint(1, OTHER_LINES))
    question, answer = rng.choice(GENERAL_QA)
    return [(memory_message(note, question), answer)]


def build_chats(rng):
    makers = {"recall": chat_recall, "update": chat_update, "abstain": chat_abstain,
              "no_note": lambda r, p: chat_abstain(r, p, with_note=False), "beside_the_point": chat_beside_the_point}
    chats = []
    for kind, n in N_CHATS.items():
        for _ in range(n):
            person = make_person(rng, "train", rng.choice(POOLS["train"]["names"]))
            messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] + opening(rng)
            for user, assistant in makers[kind](rng, person):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            chats.append({"kind": kind, "messages": messages})
    rng.shuffle(chats)
    # the longest (about 1%) are left out: most would not fit 05's 192-token conversations, and a cut one teaches
    # half a reply
    return [c for c in chats if sum(len(m["content"]) for m in c["messages"]) <= MAX_CHAT_CHARS]


# ----------------------------------------------------------------------------------------------------------------
# The benchmark's users
def build_eval_user(rng, pool, name):
    person = make_person(rng, pool, name)
    attrs = [a for a in PHRASINGS[pool] if a != "name"]
    updated = rng.choice(UPDATABLE)
    stable = rng.sample([a for a in attrs if a not in UPDATABLE], 2)
    told = ["name"] + stable + [updated]
    missing = rng.choice([a for a in attrs if a not in told and a not in UPDATABLE])
    statements = [say_fact(rng, pool, a, person)[0] for a in told]
    if rng.random() < 0.3:  # sometimes two facts in one message, as people write
        statements = [statements[0] + " " + statements[1]] + statements[2:]
    newer = dict(person, **new_value(rng, pool, person, updated))
    update_text = rng.choice(PHRASINGS[pool][updated]["update"]).format(**newer)
    turns = [{"role": "user", "content": t} for t in statements + [update_text]]
    questions = [{"ask": ask_fact(rng, pool, a, person)[0], "kind": "recall", "answer": accepted(a, person)}
                 for a in ["name"] + stable]
    questions.append({"ask": ask_fact(rng, pool, updated, newer)[0], "kind": "update",
                      "answer": accepted(updated, newer), "old": accepted(updated, person)})
    questions.append({"ask": ask_fact(rng, pool, missing, person)[0], "kind": "abstain",
                      "answer": list(ABSTAIN_ANSWERS)})
    return {"name": name, "set": pool, "heldout": False, "turns": turns, "questions": questions}


def build_heldout_user(rng, name):
    """A fresh held-out user: a name and 2-3 facts in any order, one of which (home, job, employer, pet or hobby)
    changes in the last turn; sometimes two facts share a message. Questions: every fact but the changed one
    (recall), the changed one (update), and something never said (abstain): a fact of the pool that this user did
    not state, or a question no user is ever told the answer to (NEVER_SAID)."""
    pool = "heldout"
    person = make_person(rng, pool, name)
    attrs = [a for a in PHRASINGS[pool] if a != "name"]
    updated = rng.choice(UPDATABLE_HELDOUT)
    facts = rng.sample([a for a in attrs if a != updated], rng.choice([2, 3])) + [updated]
    rng.shuffle(facts)
    told = list(facts)
    told.insert(0 if rng.random() < 0.7 else rng.randint(1, 2), "name")   # some people introduce themselves later
    statements = [say_fact(rng, pool, a, person)[0] for a in told]
    if rng.random() < 0.35:   # two facts in one message
        i = rng.randrange(len(statements) - 1)
        statements[i:i + 2] = [statements[i] + " " + statements[i + 1]]
    newer = dict(person, **new_value(rng, pool, person, updated))
    update_text = say_fact(rng, pool, updated, newer, "update")[0]
    turns = [{"role": "user", "content": t} for t in statements + [update_text]]
    questions = [{"ask": ask_fact(rng, pool, a, person)[0], "kind": "recall", "answer": accepted(a, person)}
                 for a in told if a != updated]
    questions.append({"ask": ask_fact(rng, pool, updated, newer)[0], "kind": "update",
                      "answer": accepted(updated, newer), "old": accepted(updated, person)})
    if rng.random() < 0.5:
        never = rng.choice(NEVER_SAID[pool])
    else:
        not_said = [a for a in attrs if a not in told]
        if {"job", "employer"} & set(told):   # "What's my day job?" -> "You work at Oxbow Logistics." is fair
            not_said = [a for a in not_said if a not in ("job", "employer")]
        never = ask_fact(rng, pool, rng.choice(not_said), person)[0]
    questions.append({"ask": never, "kind": "abstain", "answer": list(ABSTAIN_ANSWERS)})
    return {"name": name, "set": pool, "heldout": True, "turns": turns, "questions": questions}


def build_eval(rng, fresh_rng):
    users = []
    for pool in ("dev", "train"):   # the first edition's users, unchanged (the dev ones were "heldout" then)
        for name in rng.sample(POOLS[pool]["names"], N_EVAL_USERS[pool]):
            users.append(build_eval_user(rng, pool, name))
    for name in fresh_rng.sample(POOLS["heldout"]["names"], N_EVAL_USERS["heldout"]):
        users.append(build_heldout_user(fresh_rng, name))
    return {
        "format": "users[].turns: the user's messages in order (facts, then one update); the evaluator puts "
                  "small talk between them and before the questions, then asks each question in a new turn: "
                  "small_talk_heldout for users of set heldout, small_talk for the others. A reply is right when, "
                  "lowercased and with ’ turned into ', it contains any of answer. For kind update, old lists the "
                  "replaced value: a reply with old and without answer is stale (a right answer may name the old "
                  "value as past: 'you moved from X to Y'). set: train (the names, values and phrasings of "
                  "data/memory_chats.jsonl), dev (never in the training data, but seen while the chatbot was "
                  "built) or heldout (fresh: shares no name, value, phrasing or small talk with train or dev); "
                  "heldout is true exactly for set heldout. Report the sets apart.",
        "small_talk": list(SMALL_TALK["dev"]),
        "small_talk_heldout": list(SMALL_TALK["heldout"]),
        "users": users,
    }


# ----------------------------------------------------------------------------------------------------------------
def build():
    """-> (memory_chats.jsonl text, memory_eval.json text); the same bytes on every run."""
    rng = random.Random(SEED)
    chats = build_chats(rng)
    chats_text = "".join(json.dumps({"messages": c["messages"]}, ensure_ascii=False) + "\n" for c in chats)
    eval_text = json.dumps(build_eval(random.Random(SEED + 1), random.Random(SEED + 2)), ensure_ascii=False,
                           indent=1) + "\n"
    return chats_text, eval_text


def write_atomic(path, text):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files on disk differ from a fresh build")
    args, _ = parser.parse_known_args()
    for path, text in zip((CHATS_JSONL, EVAL_JSON), build()):
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"error: {path} is not what the generator writes; run: python data/make_memory_data.py",
                      file=sys.stderr)
                sys.exit(1)
            print(f"ok: {path.name} matches a fresh build")
        else:
            write_atomic(path, text)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
