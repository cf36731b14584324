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

Two disjoint pools of user names, other names, values, fact phrasings, question phrasings and small talk: TRAIN
(used by memory_chats.jsonl and by the eval users marked "heldout": false) and HELDOUT (used only by the eval
users marked "heldout": true). Deterministic (fixed seed): running the script again gives byte-identical files.

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
# The retrieved earlier user messages (verbatim, one line each, oldest first) go into the user's newest message,
# in front of it. With nothing retrieved the message is sent as it is.
#
#     Earlier in this conversation the user said:
#     - Morning! Rafael here.
#     - I spend my days fixing lifts in office towers.
#
#     Now the user says: What do you call me?
MEMORY_HEADER = "Earlier in this conversation the user said:"
MEMORY_ITEM = "- {}"
MEMORY_NEW_MESSAGE = "Now the user says: {}"
MEMORY_MAX_ITEMS = 4          # at most this many earlier messages in one note (the training data uses 1 to 4)


def memory_message(earlier, message):
    """The user message the model sees: the retrieved earlier user messages (oldest first) and the new message."""
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
N_CHATS = {"recall": 260, "update": 110, "abstain": 120, "no_note": 30, "beside_the_point": 60}   # 580 in all
N_EVAL_USERS = {"heldout": 36, "train": 12}
SYSTEM_PROMPTS = ["You are a helpful AI assistant.", "You are a helpful assistant.",
                  "You are a friendly assistant. Answer briefly."]
# accepted answers to an abstain question (the evaluator lowercases the reply and turns ’ into ')
ABSTAIN_ANSWERS = ["not told", "haven't told", "have not told", "didn't tell", "did not tell", "never told",
                   "don't know", "do not know", "didn't mention", "did not mention", "haven't mentioned",
                   "have not mentioned", "never mentioned", "not mentioned", "haven't said", "have not said",
                   "didn't say", "did not say", "no idea", "not sure", "haven't shared", "didn't share"]

# ----------------------------------------------------------------------------------------------------------------
# Values. TRAIN and HELDOUT pools are disjoint (tests/test_data_memory.py checks it).
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
    "heldout": {
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
}

# ----------------------------------------------------------------------------------------------------------------
# Phrasings. Slots: {name} user name, {city}, {origin}, {job} (noun: "a nurse"), {job_do} (first person: "work
# night shifts ..."), {employer}, {hobby}, {food}, {pet}, {species}, {partner}, {rel} (wife/husband/partner),
# {sibling}, {sib} (brother/sister), {allergy}, {birthday} ("14 March").
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
    "heldout": {
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
}
# the word for the partner and the sibling follows the name: FEMALE lists the women's names of both pools
PARTNER_RELS = {"train": {"f": ["wife", "girlfriend", "partner"], "m": ["husband", "boyfriend", "partner"]},
                "heldout": {"f": ["wife", "fiancée"], "m": ["husband", "fiancé"]}}
SIBLING_RELS = {"f": "sister", "m": "brother"}
FEMALE = {"Anna", "Priya", "Sofia", "Lucia", "Amara", "Elena", "Hannah", "Yuki", "Grace", "Leila", "Chloe", "Nina",
          "Mei", "Ingrid", "Aisha", "Freya", "Rosa", "Emma", "Zara", "Nadia", "Lena", "Maya", "Julia", "Clara",
          "Fatima", "Ines", "Beatriz", "Keiko", "Sigrid", "Esperanza", "Anouk", "Wanjiru", "Astrid", "Paloma",
          "Saoirse", "Henrike", "Linnea", "Marisol", "Ottilie", "Rania", "Gwen", "Adaeze", "Noor", "Eilidh",
          "Valentina"}
UPDATABLE = ["home", "job", "employer"]

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

# Small talk. TRAIN: (user, assistant) pairs for the chats (openings and distractor notes). HELDOUT: user turns
# only, for the evaluator to put between the facts and the questions.
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
    "heldout": [
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
    day, month = ordinal_day(rng), rng.choice(p["months"])
    partner, sibling = rng.sample(others, 2)
    origin, origin_key = rng.choice(p["origins"])
    rel = rng.choice(PARTNER_RELS[pool]["f" if partner in FEMALE else "m"])
    return {
        "name": name, "city": rng.choice(p["cities"]), "origin": origin, "origin_key": origin_key,
        "job": job, "job_do": job_do, "job_key": job_key, "employer": rng.choice(p["employers"]),
        "hobby": hobby, "hobby_key": hobby_key, "food": rng.choice(p["foods"]), "pet": rng.choice(p["pets"]),
        "species": rng.choice(p["species"]), "partner": partner, "rel": rel, "sibling": sibling,
        "sib": SIBLING_RELS["f" if sibling in FEMALE else "m"], "allergy": rng.choice(p["allergies"]),
        "birthday": f"{day} {month}", "day": day, "month": month,
    }


def new_value(rng, pool, person, attr):
    """A different value for an updatable attribute -> the slots that change."""
    p = POOLS[pool]
    if attr == "home":
        return {"city": rng.choice([c for c in p["cities"] if c != person["city"]])}
    if attr == "employer":
        return {"employer": rng.choice([e for e in p["employers"] if e != person["employer"]])}
    job, job_do, key = rng.choice([j for j in p["jobs"] if j[0] != person["job"]])
    return {"job": job, "job_do": job_do, "job_key": key}


def say_fact(rng, pool, attr, person, kind="state"):
    """(the user's sentence, the phrasing template used) for a fact about `person`."""
    templates = PHRASINGS[pool][attr][kind]
    template = rng.choice(templates)
    text = template.format(**person)
    return text[:1].upper() + text[1:], template


def ask_fact(rng, pool, attr, person):
    template = rng.choice(PHRASINGS[pool][attr]["ask"])
    return template.format(**person), template


def answer_value(attr, person, stated_with):
    """The value as the answer states it; the job stated as an activity is answered as an activity."""
    return {"name": person["name"], "home": person["city"], "origin": person["origin"], "job": person["job"],
            "employer": person["employer"], "hobby": person["hobby"], "food": person["food"], "pet": person["pet"],
            "partner": person["partner"], "sibling": person["sibling"], "allergy": person["allergy"],
            "birthday": person["birthday"]}[attr]


def accepted(attr, person):
    """Lowercase strings, any of which in a reply counts as recalling the fact."""
    if attr == "job":
        return list(person["job_key"])   # the trade's name, and a word of the activity ("lift", "babies")
    if attr == "hobby":
        return [person["hobby_key"].lower()]
    if attr == "birthday":
        m, d = person["month"].lower(), person["day"]
        suffix = "th" if 11 <= d <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
        return [f"{d} {m}", f"{m} {d}", f"{d}{suffix} {m}", f"{m} {d}{suffix}", f"{d}{suffix} of {m}"]
    if attr == "origin":
        return [person["origin_key"]]
    value = answer_value(attr, person, None)
    if attr == "food" and value.endswith("s") and " " not in value:
        return [value.lower(), value[:-1].lower()]
    return [value.lower()]


# ----------------------------------------------------------------------------------------------------------------
# Training conversations (TRAIN pool only)
def reply_for(rng, attr, person, statement_template):
    if attr == "partner" and "{rel}" not in statement_template:
        person = dict(person, rel="partner")   # "I'm married to Ana" says nothing about the word for her
    if attr == "job" and "{job_do}" in statement_template:
        v = person["job_do"]
        return rng.choice(ANSWERS["job_do"]).format(v=v)
    v = answer_value(attr, person, statement_template)
    slots = {k: person[k] for k in ("species", "rel", "sib")}
    return rng.choice(ANSWERS[attr]).format(v=v, **slots)


def distractors(rng, person, exclude, k):
    """Up to k other earlier user messages: other facts about the same person, or small talk."""
    out = []
    attrs = [a for a in PHRASINGS["train"] if a not in exclude]
    for _ in range(k):
        if rng.random() < 0.6 and attrs:
            attr = attrs.pop(rng.randrange(len(attrs)))
            out.append(say_fact(rng, "train", attr, person)[0])
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


def chat_recall(rng, person):
    attr = rng.choice(list(PHRASINGS["train"]))
    statement, template = say_fact(rng, "train", attr, person)
    note = interleave(rng, [statement], distractors(rng, person, {attr}, rng.randint(0, 3)))
    question, _ = ask_fact(rng, "train", attr, person)
    turns = [(memory_message(note, question), reply_for(rng, attr, person, template))]
    if rng.random() < 0.25:   # a second question in the same conversation, with its own note
        attr2 = rng.choice([a for a in PHRASINGS["train"] if a != attr])
        statement2, template2 = say_fact(rng, "train", attr2, person)
        note2 = interleave(rng, [statement2], distractors(rng, person, {attr, attr2}, rng.randint(0, 1)))
        question2, _ = ask_fact(rng, "train", attr2, person)
        turns.append((memory_message(note2, question2), reply_for(rng, attr2, person, template2)))
    return turns


def chat_update(rng, person):
    attr = rng.choice(UPDATABLE)
    old_statement, _ = say_fact(rng, "train", attr, person)
    old = answer_value(attr, person, None)
    newer = dict(person, **new_value(rng, "train", person, attr))
    new_statement = rng.choice(PHRASINGS["train"][attr]["update"]).format(**newer)
    note = interleave(rng, [old_statement, new_statement], distractors(rng, person, {attr}, rng.randint(0, 2)))
    question, _ = ask_fact(rng, "train", attr, newer)
    if rng.random() < 0.4:
        question = question.rstrip("?") + " now?"
    reply = rng.choice(UPDATE_ANSWERS[attr]).format(v=answer_value(attr, newer, None), old=old)
    return [(memory_message(note, question), reply)]


def chat_abstain(rng, person, with_note=True):
    attrs = list(PHRASINGS["train"])
    missing = rng.choice(attrs)
    known = [a for a in attrs if a != missing]
    note = [say_fact(rng, "train", a, person)[0] for a in rng.sample(known, rng.randint(1, 3))] if with_note else []
    if with_note and rng.random() < 0.3:
        note.insert(rng.randint(0, len(note)), rng.choice(SMALL_TALK["train"])[0])
    question, _ = ask_fact(rng, "train", missing, person)
    reply = rng.choice(ABSTAIN_REPLIES).format(what=NOT_TOLD[missing])
    return [(memory_message(note, question), reply)]


def chat_beside_the_point(rng, person):
    note = distractors(rng, person, set(), rng.randint(1, 3))
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
    return chats


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
    return {"name": name, "heldout": pool == "heldout", "turns": turns, "questions": questions}


def build_eval(rng):
    users = []
    for pool, key in (("heldout", "heldout"), ("train", "train")):
        for name in rng.sample(POOLS[pool]["names"], N_EVAL_USERS[key]):
            users.append(build_eval_user(rng, pool, name))
    return {
        "format": "users[].turns: the user's messages in order (facts, then one update); the evaluator puts "
                  "small talk (small_talk) between them and before the questions, then asks each question in a "
                  "new turn. A reply is right when, lowercased and with ’ turned into ', it contains any of "
                  "answer. For kind update, old lists the replaced value: a reply with old and without answer is "
                  "stale (a right answer may name the old value as past: 'you moved from X to Y'). heldout users "
                  "use only names, values and phrasings that data/memory_chats.jsonl never contains.",
        "small_talk": list(SMALL_TALK["heldout"]),
        "users": users,
    }


# ----------------------------------------------------------------------------------------------------------------
def build():
    """-> (memory_chats.jsonl text, memory_eval.json text); the same bytes on every run."""
    rng = random.Random(SEED)
    chats = build_chats(rng)
    chats_text = "".join(json.dumps({"messages": c["messages"]}, ensure_ascii=False) + "\n" for c in chats)
    eval_text = json.dumps(build_eval(random.Random(SEED + 1)), ensure_ascii=False, indent=1) + "\n"
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
