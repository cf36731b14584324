"""A proxy evaluation set for the memory benchmark: data/memory_proxy.json (a second dev set, shaped like the held-out users).

Same JSON format as data/memory_eval.json, 40 users of set "dev" ("heldout": false) with the structure of
the generator's held-out users (build_heldout_user in data/make_memory_data.py): a name and 2-3 other facts plus the
fact that later changes, in random order (name first in ~70% of users), two facts sometimes merged into one message
(~35%), one fact (home, job, employer, pet or hobby) updated in the last turn; questions: recall (every told fact but
the changed one), update (the changed one: answer the new value, old the old one), abstain (half a pool fact the
user did not state, half a question nobody is ever told the answer to).

Every phrasing, value and small-talk line below was written for this file, apart from data/make_memory_data.py and
data/memory_train_phrasings.json; the checks at the end (printed) confirm that nothing was copied.
Deterministic (fixed seed): running it again writes byte-identical output.

Run:  python data/make_memory_proxy.py     (build, check, write data/memory_proxy.json)
Use:  python companions/06_memory_eval.py --set dev --data data/memory_proxy.json --context 512 --conditions retrieval+

Why: the dev users share the training data's structure and are easier than the held-out ones; choices made on dev
alone did not carry over. This proxy has the held-out users' structure and its own words, so a change can be judged
on dev and here before the held-out users are measured once.
"""
import ast
import json
import random
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "memory_proxy.json"
MAIN = Path(__file__).resolve().parent.parent
SEED = 5_2026_0522
N_USERS = 40
def load_generator():
    """data/make_memory_data.py's pools and phrasings, read without importing (no bytecode written there)."""
    path = MAIN / "data" / "make_memory_data.py"
    namespace = {"__file__": str(path), "__name__": "make_memory_data_readonly"}
    sys.dont_write_bytecode = True
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


GEN = load_generator()   # its answer conventions are the benchmark's: ABSTAIN_ANSWERS, accepted()
ABSTAIN_ANSWERS = GEN["ABSTAIN_ANSWERS"]

# ----------------------------------------------------------------------------------------------------------------
# Values (fresh: none of them occurs in data/make_memory_data.py or data/memory_eval.json; checked below)
FEMALE = ["Philippa", "Agnieszka", "Thandiwe", "Mireille", "Genoveva", "Henrietta", "Ragnhild", "Clementine",
          "Akosua", "Bronwen", "Dorota", "Esmeralda", "Gudrun", "Hyacinth", "Isadora", "Jacinta", "Katarzyna",
          "Magdalena", "Oksana", "Petronella", "Roisin", "Svetlana", "Tuulikki", "Veronika", "Winifred", "Zofia",
          "Marjolein", "Ngozi", "Teodora", "Annika"]
MALE = ["Bartholomew", "Cosimo", "Dragan", "Evander", "Gideon", "Hamish", "Ignatius", "Jerome", "Leander",
        "Mortimer", "Nikodem", "Obadiah", "Percival", "Radomir", "Sebastiano", "Thaddeus", "Umberto", "Vasily",
        "Wolfgang", "Yevgeny", "Zebedee", "Augustin", "Barnaby", "Cuthbert", "Dashiell", "Emrys", "Gaspard",
        "Ludovic", "Makoto", "Anselm"]
NAMES = FEMALE + MALE
CITIES = ["Bratislava", "Plovdiv", "Szeged", "Bergamo", "Coimbra", "Ghent", "Maastricht", "Freiburg", "Heidelberg",
          "Montpellier", "Grenoble", "Kaunas", "Tartu", "Lviv", "Sarajevo", "Thessaloniki", "Izmir", "Tangier",
          "Windhoek", "Kigali", "Arusha", "Durban", "Cusco", "Medellin", "Guadalajara", "Savannah", "Asheville",
          "Saskatoon", "Launceston", "Rotorua", "Nagasaki", "Kanazawa", "Busan", "Chiang Mai", "Penang", "Jaipur",
          "Esbjerg", "Uppsala", "Trieste", "Toulouse"]
ORIGINS = [("a tea estate in Darjeeling", "darjeeling"), ("the Shetland Islands", "shetland"),
           ("a lakeside village in Masuria", "masuria"), ("Zanzibar", "zanzibar"), ("the Outer Hebrides", "hebrides"),
           ("a cattle station in Queensland", "queensland"), ("Transylvania", "transylvania"),
           ("the Algarve", "algarve"), ("a river town in Bavaria", "bavaria"), ("Mindanao", "mindanao"),
           ("the Yorkshire Dales", "yorkshire"), ("Cappadocia", "cappadocia"), ("the Amalfi coast", "amalfi"),
           ("Sumatra", "sumatra"), ("the Peloponnese", "peloponnese"), ("a vineyard outside Mendoza", "mendoza"),
           ("the Isle of Skye", "skye"), ("Kyushu", "kyushu"), ("the Lake District", "lake district"),
           ("Jutland", "jutland"), ("Andalusia", "andalusia"), ("a spa town in Bohemia", "bohemia")]
# (the job as a noun, the job as what "I" do, accepted answers: a word of the noun and a word of the activity)
JOBS = [("a luthier", "build and repair violins", ["luthier", "violin"]),
        ("a stonemason", "carve stone for old cathedrals", ["stonemason", "cathedral"]),
        ("a blacksmith", "forge horseshoes and iron gates", ["blacksmith", "horseshoe", "forge"]),
        ("a perfumer", "blend scents for a fragrance house", ["perfume", "scent", "fragrance"]),
        ("a cartographer", "draw maps for hiking guides", ["cartograph", "maps"]),
        ("a puppeteer", "work the puppets in a children's theatre", ["puppet"]),
        ("a taxidermist", "stuff animals for natural history museums",
         ["taxiderm", "stuff animals", "stuffed animals", "stuffing animals"]),
        ("a sign painter", "hand-letter shop signs", ["sign painter", "shop sign", "hand-letter", "signwrit"]),
        ("a bicycle mechanic", "fix bikes in a repair shop", ["bicycle", "bike"]),
        ("a lighthouse keeper", "keep the lamp burning on a rocky island", ["lighthouse", "lamp"]),
        ("a falconer", "fly hawks to scare pigeons away from airfields", ["falcon", "hawk"]),
        ("a chimney sweep", "clean the soot out of chimneys", ["chimney", "soot"]),
        ("a bookbinder", "rebind old books by hand", ["bookbind", "rebind"]),
        ("a dog groomer", "wash and trim dogs at a grooming parlour", ["groom"]),
        ("a sheep shearer", "shear sheep on farms across the county", ["shearer", "shear sheep", "shearing"]),
        ("a ski instructor", "teach beginners to ski", ["ski instructor", "to ski", "skiing"]),
        ("a surveyor", "measure land for new roads", ["surveyor", "measure land"]),
        ("a pastry chef", "bake croissants before dawn", ["pastry", "croissant"]),
        ("a deckhand", "haul ropes on a cargo boat", ["deckhand", "cargo"]),
        ("a mountain guide", "lead climbers up alpine peaks", ["mountain guide", "climbers", "alpine"]),
        ("a saddler", "stitch leather saddles for horses", ["saddle"]),
        ("an auctioneer", "sell antiques at auction", ["auction"]),
        ("a projectionist", "run the film reels at an old cinema", ["projectionist", "film reels", "projector"]),
        ("a goldsmith", "make wedding rings", ["goldsmith", "wedding ring"]),
        ("a seismologist", "measure earthquakes", ["seismolog", "earthquake"]),
        ("a barista", "make flat whites in a busy cafe", ["barista", "flat white"]),
        ("a tree surgeon", "prune old oak trees", ["tree surgeon", "prune"]),
        ("a train conductor", "check tickets on night trains", ["conductor", "ticket"]),
        ("a radiographer", "take X-rays at a hospital", ["radiograph", "x-ray"]),
        ("an upholsterer", "reupholster old sofas and armchairs", ["upholster", "sofa"]),
        ("a cobbler", "mend shoes and boots", ["cobbler", "mend shoes", "resole"]),
        ("an ice cream maker", "churn ice cream for a seaside parlour", ["ice cream"])]
EMPLOYERS = ["Ashcombe Ceramics", "Bellhaven Shipping", "Cindervale Energy", "Dovecote Insurance",
             "Elmstead Pharmacy", "Fairhollow Foods", "Glenmorrow Distillery", "Hollowmere Water", "Inkwell Media",
             "Kettlewell Appliances", "Lanternfish Games", "Mossgrove Nurseries", "Nimbus Aerospace",
             "Orchardine Cider", "Pebblebrook Academy", "Quillmarsh Legal", "Rookwood Tiles", "Starling Telecom",
             "Tumbleweed Transport", "Umberfield Hospice", "Vantablue Paints", "Willowmere Care", "Yarrowby Farms",
             "Zinnia Cosmetics", "Cloudberry Bakehouse", "Driftwood Surf Company", "Foxhollow Vets",
             "Gannet Bay Fisheries", "Marigold Printworks", "Tarnbrook Engineering"]
PETS = ["Flapjack", "Hobnob", "Crouton", "Chutney", "Meringue", "Tofu", "Kipper", "Brioche", "Wonton", "Jellybean",
        "Muffin", "Fudge", "Bonbon", "Churro", "Nacho", "Gumdrop", "Twiglet", "Bramley", "Sardine", "Conker",
        "Acorn", "Thimble", "Pompom", "Dandelion", "Biro", "Pesto", "Taffy", "Chorizo", "Rhubarb", "Sprinkles"]
SPECIES = ["beagle", "dachshund", "labrador", "poodle", "whippet", "corgi", "dalmatian", "border collie", "gecko",
           "axolotl", "bearded dragon", "corn snake", "goldfish", "lovebird", "canary", "gerbil", "pug", "ragdoll cat",
           "macaw", "tarantula"]
HOBBIES = [("bell ringing", "bell ring"), ("foraging for wild mushrooms", "forag"), ("playing the bagpipes", "bagpipe"),
           ("fly fishing", "fly fish"), ("restoring vintage typewriters", "typewriter"),
           ("ballroom dancing", "ballroom"), ("playing the ukulele", "ukulele"), ("brewing kombucha", "kombucha"),
           ("orienteering", "orienteer"), ("quilting", "quilt"), ("embroidery", "embroider"),
           ("snorkelling", "snorkel"), ("paragliding", "paraglid"), ("fossil hunting", "fossil"),
           ("table tennis", "table tennis"), ("badminton", "badminton"), ("playing the accordion", "accordion"),
           ("metal detecting", "metal detect"), ("writing fan fiction", "fan fiction"),
           ("collecting vinyl records", "vinyl"), ("growing bonsai trees", "bonsai"), ("doing sudoku", "sudoku"),
           ("tap dancing", "tap danc"), ("go-karting", "kart"), ("scuba diving", "scuba"), ("crochet", "crochet"),
           ("wood turning", "wood turn"), ("playing the trombone", "trombone"), ("solving Rubik's cubes", "rubik"),
           ("kitesurfing", "kitesurf")]
FOODS = ["halloumi", "jambalaya", "gumbo", "pavlova", "tiramisu", "ratatouille", "cassoulet", "pastitsio", "bobotie",
         "feijoada", "okonomiyaki", "takoyaki", "fajitas", "gazpacho", "quiche", "souvlaki", "nasi goreng", "rendang",
         "pelmeni", "beef wellington", "massaman curry", "stroopwafels"]
ALLERGIES = ["cashews", "almonds", "chickpeas", "avocado", "coconut", "buckwheat", "pine nuts", "sunflower seeds",
             "aubergine", "sweetcorn", "cinnamon", "pineapple"]
BIRTHDAYS = [("Bastille Day", 14, "July"), ("Groundhog Day", 2, "February"), ("April Fools' Day", 1, "April"),
             ("Midsummer's Day", 24, "June"), ("St Andrew's Day", 30, "November"), ("St George's Day", 23, "April"),
             ("St David's Day", 1, "March"), ("Star Wars Day", 4, "May"), ("Remembrance Day", 11, "November"),
             ("Earth Day", 22, "April"), ("Twelfth Night", 5, "January"), ("Independence Day", 4, "July")]
# more accepted answers for some values (a reply may shorten or respell them); lowercase
ALSO_ACCEPTED = {
    **{e: [e.split()[0].lower()] for e in EMPLOYERS},
    "Gannet Bay Fisheries": ["gannet bay"], "Driftwood Surf Company": ["driftwood surf", "driftwood"],
    "bell ringing": ["bell-ring", "bellring"], "fly fishing": ["fly-fish"], "table tennis": ["ping pong", "ping-pong"],
    "metal detecting": ["detectorist"], "writing fan fiction": ["fanfic", "fan-fic"], "tap dancing": ["tap-danc"],
    "wood turning": ["woodturn", "wood-turn", "lathe"], "solving Rubik's cubes": ["speedcub"],
    "kitesurfing": ["kite surf", "kite-surf"],
    "halloumi": ["haloumi"], "tiramisu": ["tiramisù"], 
    "massaman curry": ["massaman"], "okonomiyaki": ["okonomi"],
    "cashews": ["cashew"], "almonds": ["almond"], "chickpeas": ["chickpea", "garbanzo"], "pine nuts": ["pine nut"],
    "sunflower seeds": ["sunflower"], "aubergine": ["eggplant"], "sweetcorn": ["sweet corn"],
    "Bastille Day": ["bastille"], "Groundhog Day": ["groundhog"], "April Fools' Day": ["april fool"],
    "Midsummer's Day": ["midsummer"], "St Andrew's Day": ["st andrew", "saint andrew"],
    "St George's Day": ["st george", "saint george"], "St David's Day": ["st david", "saint david"],
    "Star Wars Day": ["star wars", "may the fourth", "may the 4th"], "Remembrance Day": ["remembrance", "armistice"],
    "Independence Day": ["fourth of july", "4th of july"],
}
PARTNER_RELS = {"f": ["wife", "girlfriend"], "m": ["husband", "boyfriend"]}
SIBLING_RELS = {"f": "sister", "m": "brother"}
UPDATABLE = ["home", "job", "employer", "pet", "hobby"]

# ----------------------------------------------------------------------------------------------------------------
# Phrasings, written for this file. Slots as in the generator: {name}, {city}, {origin}, {job}, {job_do},
# {employer}, {hobby}, {food}, {pet}, {species}, {partner}, {rel}, {sibling}, {sib}, {allergy}, {birthday};
# one more: {a_species} ("an axolotl", the species with its article).
PHRASINGS = {
    "name": {"state": ["Hiya, {name} at the keyboard.", "First things first: I'm {name}.",
                       "I'm {name}, and I've got a few things to get off my chest.",
                       "It says {name} on my passport, so that's what you can use.",
                       "Hey, it's {name}, first time chatting with one of these bots.",
                       "{name} signing on for the evening.",
                       "Just a quick hello before anything else, I'm {name}.", "Sorry, how rude of me, I'm {name}!"],
             "ask": ["Any idea who's on the other end of this chat?",
                     "How would my friends shout for me across a busy pub?", "Who's typing these messages?",
                     "Whose name should the restaurant put the reservation under?",
                     "Whose questions have you been answering?", "Can you greet me properly, name and all?"]},
    "home": {"state": ["I'm writing this from a cafe around the corner from my flat in {city}.",
                       "I grow tomatoes on the windowsill of my flat in {city}.",
                       "The walls in my {city} apartment are so thin I can hear the neighbours sneeze.",
                       "Every morning I jog round the park near my place in {city}.",
                       "The postman in {city} keeps delivering my mail to next door.",
                       "Like everyone else who lives in {city}, I complain about the tourists every summer.",
                       "Nobody believes me, but living in {city} is lovely."],
             "ask": ["Which city am I a local of right now?", "Which city is my front door in?",
                     "Which city's council collects my bins?",
                     "Which town should a taxi take me to when I get back from holiday?",
                     "Remind me what city I'm living in.", "Which city do I put on forms as my address?"],
             "update": ["I've put down roots in {city} now, the old place is behind me.",
                        "We handed back the keys to the old house; home is {city} from now on.",
                        "Left the old place for good, my post goes to {city} now.",
                        "After ten years in the same town I've finally made the jump to {city}.",
                        "My new neighbours brought round biscuits to welcome us to {city}."]},
    "origin": {"state": ["Up to the age of twelve I was climbing trees and getting muddy in {origin}.",
                         "Mum still posts me parcels of sweets from {origin}, where I was a child.",
                         "Every photo of me as a toddler has {origin} in the background.",
                         "I'm a child of {origin}, through and through.",
                         "I went to a tiny primary school in {origin}, twelve pupils in total.",
                         "I didn't see a big city until I was sixteen, being from {origin}.",
                         "Until I left for college I'd never lived anywhere but {origin}."],
               "ask": ["Before I was an adult, where did I call home?", "Where do my childhood memories take place?",
                       "If I went on a trip down memory lane, where would I end up?",
                       "What place do I picture when I think about being small?",
                       "Where was I living at eight years old?", "Where did I learn to walk and talk?"]},
    "job": {"state": ["My nan still can't believe I {job_do} for money.",
                      "I qualified as {job} a few years back and I love it.", "I trained for four years to become {job}.",
                      "After uni I fell into a job where I {job_do}, and I never left.",
                      "Being {job} is hard on the back but good for the soul.",
                      "At parties, telling people I'm {job} always starts a conversation.",
                      "I got my first proper job as {job} and never looked back.",
                      "Believe it or not, I {job_do}. That's the job."],
            "ask": ["Which career have I ended up in?", "How would you describe my work to a stranger?",
                    "Remind me how I make a living.", "Which job keeps me in pocket?", "What sort of work fills my weekdays?",
                    "Which trade or profession do I practise?"],
            "update": ["Plot twist: I walked out of the old job, and now I {job_do}.",
                       "After a year of night classes I've become {job}.",
                       "The career change finally happened, I {job_do} full time now.",
                       "My boss was awful so I left; now I'm working as {job}.",
                       "You'll laugh, but I've jumped ship to a completely different field: I'm {job} now."]},
    "employer": {"state": ["I've been on the team at {employer} since it was a tiny outfit.",
                           "I'm one of about two hundred people at {employer}.",
                           "The lifts at {employer} are out again, so it's six flights of stairs to my desk.",
                           "The new CEO at {employer} wants everyone back in the office.",
                           "Forty unread emails already today at {employer}.",
                           "My team at {employer} is hiring, if you know anyone.",
                           "My contract with {employer} runs until next year."],
                 "ask": ["Which firm would answer if you rang my office?", "Name the company I'm employed at.",
                         "Whose name is on the building I go to for work?", "What company's lanyard do I wear?",
                         "Who would I be letting down if I pulled a sickie?", "Which employer gets my Monday mornings?"],
                 "update": ["Said my goodbyes at the old firm; the {employer} crowd are my colleagues now.",
                            "{employer} poached me from my old company last week.",
                            "Five days into the new job at {employer} and I don't miss the old place at all.",
                            "Started on Tuesday at {employer}, goodbye old company.",
                            "The old company let me go, but {employer} snapped me up straight away."]},
    "hobby": {"state": ["I blocked out every Sunday morning for {hobby}.",
                        "My grandad got me into {hobby} when I was ten.",
                        "I've got a shelf full of books about {hobby}.", "I lose whole afternoons to {hobby}.",
                        "I'd call myself a bit of a nerd about {hobby}.",
                        "I run a little online group for people into {hobby}.",
                        "Ask me about {hobby} and I'll talk for an hour."],
              "ask": ["Which activity takes up my free evenings?",
                      "What kind of present would suit my favourite pastime?",
                      "What do I get excited about doing at the weekend?",
                      "What would my friends say I never shut up about, hobby-wise?",
                      "What could I happily do for hours on end?", "What skill have I been honing after hours?"],
              "update": ["Goodbye to the old hobby: these days I'm all about {hobby}.",
                         "New year, new hobby: I've taken up {hobby}.",
                         "Sold all my old gear and started {hobby} instead.",
                         "These days my free time goes on {hobby}, I've lost interest in the old stuff.",
                         "A friend dragged me along to try {hobby}, and now I've dropped my old hobby for it."]},
    "food": {"state": ["If I had my way, I'd have {food} for breakfast too.", "Friday night in our house is always {food}.",
                       "My friends know not to get between me and {food}.",
                       "My mouth waters just thinking about {food}.",
                       "There's a little place near the station that does the best {food}, and I go twice a week.",
                       "Whenever I get a treat meal, I go for {food}.", "I'll never turn down {food}."],
             "ask": ["What should I get if we went out to eat?", "Which food do I crave the most?",
                     "What would you bake or cook for me as a treat?", "Which restaurant dish do I always order?",
                     "What's my number one dish?", "What food puts a smile on my face?"]},
    "pet": {"state": ["Last year I brought home {a_species}, and I named it {pet}.",
                      "The most spoilt {species} in the world lives with me, and it's called {pet}.",
                      "Breakfast in my house is served to {pet}, my {species}, before anyone else.",
                      "I spent my lunch break buying a new toy for {pet}, my {species}.",
                      "My {species} {pet} has been sulking since I rearranged the living room.",
                      "The kids next door are obsessed with my {species}, {pet}."],
            "ask": ["What name do I shout when I want my {species} to come in?",
                    "Which name gets my {species}'s attention?", "What name is on my pet's vet records?",
                    "Who gets fed first in my house, by name?",
                    "If my {species} ran off, what name would I put on the posters?",
                    "How do I address my {species} when I'm telling it off?"],
            "update": ["My parents took the old pet off my hands; the new arrival is {pet}, {a_species}.",
                       "RIP to our old pet. Meet the newest family member: {pet} the {species}.",
                       "We rehomed our old pet with a farm, and now there's a new {species} in the house called {pet}.",
                       "Brand new pet alert: {pet}, {a_species}, replaces the old one who passed away last winter.",
                       "Couldn't stand the quiet after our last pet died, so I got {a_species}: {pet}."]},
    "partner": {"state": ["My {rel} {partner} is teaching me to play chess, badly.",
                          "I've been with my {rel}, {partner}, since university.",
                          "{partner}, my {rel}, made me breakfast in bed this morning.",
                          "Honestly, {partner} is the best {rel} anyone could ask for.",
                          "My {rel} {partner} and I disagree about everything except pizza.",
                          "My {rel} {partner} has been planning our holiday for weeks."],
                "ask": ["Who wakes up next to me each morning?", "Who stole my heart?",
                        "Who do I cook dinner with most nights?", "Who's my plus-one at weddings?",
                        "Who do I celebrate an anniversary with?", "Who do I hold hands with at the cinema?"]},
    "sibling": {"state": ["My {sib} {sibling} still owes me twenty quid from last summer.",
                          "{sibling}, my younger {sib}, just passed the driving test.",
                          "I'm the eldest; my {sib} {sibling} came along three years later.",
                          "My {sib} {sibling} is coming round to fix my wobbly shelves tonight.",
                          "My {sib} {sibling} just started at university, and I miss the chaos at home.",
                          "It was my {sib} {sibling} who taught me to swim."],
                "ask": ["What do my parents call their other child?", "If I invited my {sib} over, who would turn up?",
                        "Who's the {sib} I keep going on about?", "What's the name my {sib} goes by?",
                        "What name would I yell across the house to get my {sib}'s attention?",
                        "At family dinners, who's the {sib} sitting across from me?"]},
    "allergy": {"state": ["I read every food label twice, because anything with {allergy} makes me seriously ill.",
                          "If there's {allergy} in a dish, my lips start tingling and swelling.",
                          "The school nurse was the first to spot that I react to {allergy}.",
                          "One bite of anything with {allergy} in it and I'm covered in red blotches.",
                          "Every packed lunch I ever had was checked for {allergy} by my mum.",
                          "Cooking for me is tricky: absolutely no {allergy}, or I get really sick."],
                "ask": ["What should a doctor know before treating me?", "What sets off my allergies?",
                        "What should the chef leave out of my order?",
                        "What's the one thing I must always dodge, health-wise?",
                        "Which ingredient has to be kept off my plate?", "What could make me ill at a dinner party?"]},
    "birthday": {"state": ["Being born on {birthday} means nobody ever forgets my birthday.",
                           "Every {birthday} I get a double celebration, since it's my birthday too.",
                           "The day I was born was {birthday}, so my parents had a busy one.",
                           "My birthday cards always mention {birthday}, since that's the day.",
                           "Turning thirty this {birthday}, send help.",
                           "I've never had a normal birthday party, because mine is on {birthday}."],
                 "ask": ["Which date would my birth certificate show?", "What day should I book off work for my birthday?",
                         "When would you send me birthday wishes?", "When do I open my birthday presents?",
                         "What date should my birthday reminder be set for?", "What date do my friends need to keep free for my birthday?"]},
}
# questions about things no user of this file is ever told
NEVER_SAID = ["Who taught me in my first year at school?", "Which political party do I vote for?",
              "What's my wifi password?", "Do I have a big extended family?", "What did I have for lunch today?",
              "Which musical did I see last?", "What was my grandad's job?", "What size jacket do I wear?",
              "What's my favourite song to sing in the shower?", "What was my first car?"]
# small talk between the statements and before the questions (no user facts in it)
SMALL_TALK = [
    "Is it just me or are the evenings getting lighter?", "What's a good film for a lazy Sunday afternoon?",
    "How do you stop pasta from sticking together?", "Did you catch the match last night?",
    "Why does thunder come after lightning?", "What's the best way to keep fresh herbs from wilting?",
    "I can't believe how foggy it is this morning.", "Which is healthier, brown rice or white rice?",
    "Can you explain the offside rule in simple terms?", "Is it worth seeing a film in 3D?",
    "How long should you rest a steak after cooking it?", "Why do golf balls have dimples?",
    "How can you tell a comet from an asteroid?", "The sunset was gorgeous tonight.",
    "What are some easy soups for a cold day?", "Who holds the record for the fastest 100 metres?",
    "Can you recommend a classic black-and-white film?", "Why does popcorn pop?",
    "My umbrella just turned inside out, typical.", "How many players are on a rugby team?",
    "Is it true that we only use ten percent of our brains?", "What spice turns rice yellow?",
    "Haha, a squirrel just stared at me through the window.", "How do you make proper hot chocolate?",
    "Why do they light the Olympic flame so long before the games?", "It's been drizzling all day.",
    "Why do some cheeses have holes in them?", "What makes a good crime novel?",
    "Tennis or squash, which burns more calories?", "How do I stop my glasses steaming up in the cold?",
]

FORMAT = ("users[].turns: the user's messages in order (facts, then one update); the evaluator puts small talk between "
          "them and before the questions, then asks each question in a new turn: small_talk_heldout for users of set "
          "heldout, small_talk for the others. A reply is right when, lowercased and with ’ turned into ', it contains "
          "any of answer. For kind update, old lists the replaced value: a reply with old and without answer is stale "
          "(a right answer may name the old value as past: 'you moved from X to Y'). This file: a proxy set of 40 "
          "users of set dev (heldout false), with the structure of data/memory_eval.json's held-out users but names, "
          "values, phrasings and small talk written apart from data/make_memory_data.py (small_talk_heldout = "
          "small_talk, present so the file loads).")


# ----------------------------------------------------------------------------------------------------------------
def article(word):
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def make_person(rng, name):
    others = [n for n in NAMES if n != name]
    job, job_do, job_key = rng.choice(JOBS)
    hobby, hobby_key = rng.choice(HOBBIES)
    birthday, day, month = rng.choice(BIRTHDAYS)
    partner, sibling = rng.sample(others, 2)
    origin, origin_key = rng.choice(ORIGINS)
    species = rng.choice(SPECIES)
    return {"name": name, "city": rng.choice(CITIES), "origin": origin, "origin_key": origin_key,
            "job": job, "job_do": job_do, "job_key": job_key, "employer": rng.choice(EMPLOYERS),
            "hobby": hobby, "hobby_key": hobby_key, "food": rng.choice(FOODS), "pet": rng.choice(PETS),
            "species": species, "a_species": article(species), "partner": partner,
            "rel": rng.choice(PARTNER_RELS["f" if partner in FEMALE else "m"]), "sibling": sibling,
            "sib": SIBLING_RELS["f" if sibling in FEMALE else "m"], "allergy": rng.choice(ALLERGIES),
            "birthday": birthday, "day": day, "month": month}


def new_value(rng, person, attr):
    if attr == "home":
        return {"city": rng.choice([c for c in CITIES if c != person["city"]])}
    if attr == "employer":
        return {"employer": rng.choice([e for e in EMPLOYERS if e != person["employer"]])}
    if attr == "pet":
        species = rng.choice(SPECIES)
        return {"pet": rng.choice([x for x in PETS if x != person["pet"]]), "species": species,
                "a_species": article(species)}
    if attr == "hobby":
        hobby, key = rng.choice([h for h in HOBBIES if h[0] != person["hobby"]])
        return {"hobby": hobby, "hobby_key": key}
    job, job_do, key = rng.choice([j for j in JOBS if j[0] != person["job"]])
    return {"job": job, "job_do": job_do, "job_key": key}


def accepted(attr, person):
    """Lowercase strings, any of which in a reply counts as recalling the fact: the generator's own rule."""
    return GEN["accepted"](attr, person, also=ALSO_ACCEPTED)


def say(rng, attr, person, kind="state"):
    text = rng.choice(PHRASINGS[attr][kind]).format(**person)
    return text[:1].upper() + text[1:]


def build_user(rng, name, plan):
    """build_heldout_user's structure, with this file's pools. plan: this user's share of the stratified draws
    (which fact changes, how many others, name first or not, two facts merged or not, which kind of abstain)."""
    person = make_person(rng, name)
    attrs = [a for a in PHRASINGS if a != "name"]
    updated = plan["updated"]
    facts = rng.sample([a for a in attrs if a != updated], plan["others"]) + [updated]
    rng.shuffle(facts)
    told = list(facts)
    told.insert(0 if plan["name_first"] else rng.randint(1, 2), "name")   # some introduce themselves later
    statements = [say(rng, a, person) for a in told]
    merged = plan["merged"]                                         # two facts in one message
    if merged:
        i = rng.randrange(len(statements) - 1)
        statements[i:i + 2] = [statements[i] + " " + statements[i + 1]]
    newer = dict(person, **new_value(rng, person, updated))
    update_text = say(rng, updated, newer, "update")
    turns = [{"role": "user", "content": t} for t in statements + [update_text]]
    questions = [{"ask": say(rng, a, person, "ask"), "kind": "recall", "answer": accepted(a, person)}
                 for a in told if a != updated]
    questions.append({"ask": say(rng, updated, newer, "ask"), "kind": "update",
                      "answer": accepted(updated, newer), "old": accepted(updated, person)})
    if plan["never_said"]:
        never, never_kind = rng.choice(NEVER_SAID), "never_said"
    else:
        not_said = [a for a in attrs if a not in told]
        if {"job", "employer"} & set(told):   # "Which job keeps me in pocket?" -> "You work at X." would be fair
            not_said = [a for a in not_said if a not in ("job", "employer")]
        missing = rng.choice(not_said)
        # a question that names nothing the user did not say ("my {species}" would reveal a species)
        plain = [q for q in PHRASINGS[missing]["ask"] if "{" not in q] or PHRASINGS[missing]["ask"]
        never, never_kind = rng.choice(plain).format(**person), "pool:" + missing
    questions.append({"ask": never, "kind": "abstain", "answer": list(ABSTAIN_ANSWERS)})
    user = {"name": name, "set": "dev", "heldout": False, "turns": turns, "questions": questions}
    meta = {"told": told, "updated": updated, "merged": merged, "abstain": never_kind, "person": person,
            "newer": newer}
    return user, meta


def build():
    rng = random.Random(SEED)
    names = rng.sample(NAMES, N_USERS)
    # the generator's proportions, drawn stratified so that 40 users hit them: each fact updated equally often,
    # 2 or 3 other facts half and half, name first 70%, two facts merged 35%, never-said abstain 50%
    def spread(values):
        values = list(values)
        rng.shuffle(values)
        return values
    plans = zip(spread(UPDATABLE * (N_USERS // len(UPDATABLE))), spread([2, 3] * (N_USERS // 2)),
                spread([True] * round(0.7 * N_USERS) + [False] * (N_USERS - round(0.7 * N_USERS))),
                spread([True] * round(0.35 * N_USERS) + [False] * (N_USERS - round(0.35 * N_USERS))),
                spread([True, False] * (N_USERS // 2)))
    keys = ("updated", "others", "name_first", "merged", "never_said")
    built = [build_user(rng, name, dict(zip(keys, plan))) for name, plan in zip(names, plans)]
    data = {"format": FORMAT, "small_talk": list(SMALL_TALK), "small_talk_heldout": list(SMALL_TALK),
            "users": [u for u, _ in built]}
    return data, [m for _, m in built]


# ----------------------------------------------------------------------------------------------------------------
# Checks
def words(text):
    return {w.strip("'") for w in re.findall(r"[\w{}'-]+", text.lower())} - {""}


def norm(text):
    return " ".join(text.lower().split())


def all_string_literals(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def check(data, metas):
    ok = True
    gen = GEN
    py_path = MAIN / "data" / "make_memory_data.py"
    py_text = py_path.read_text(encoding="utf-8")
    eval_text = (MAIN / "data" / "memory_eval.json").read_text(encoding="utf-8")
    more_json = json.loads((MAIN / "data" / "memory_train_phrasings.json").read_text(encoding="utf-8"))

    # 1. no phrasing of mine equals any string of make_memory_data.py (or of memory_train_phrasings.json)
    py_strings = {norm(s) for s in all_string_literals(py_path)}
    json_strings = set()
    for attr, kinds in more_json.items():
        if attr == "never_said":
            json_strings |= {norm(q) for q, _ in kinds}
        else:
            json_strings |= {norm(t) for ts in kinds.values() for t in ts}
    mine = [(f"{attr}.{kind}", t) for attr, kinds in PHRASINGS.items() for kind, ts in kinds.items() for t in ts]
    mine += [("never_said", q) for q in NEVER_SAID] + [("small_talk", s) for s in SMALL_TALK]
    equal_py = [(w, t) for w, t in mine if norm(t) in py_strings]
    equal_json = [(w, t) for w, t in mine if norm(t) in json_strings]
    print(f"copy check 1: {len(mine)} phrasings of mine ({sum(1 for w, _ in mine if w.endswith('.state'))} "
          f"statements, {sum(1 for w, _ in mine if w.endswith('.update'))} updates, "
          f"{sum(1 for w, _ in mine if w.endswith('.ask'))} questions, {len(NEVER_SAID)} never-said questions, "
          f"{len(SMALL_TALK)} small-talk lines) vs {len(py_strings)} string literals of make_memory_data.py: "
          f"{len(equal_py)} equal {equal_py or ''}; vs {len(json_strings)} phrasings of memory_train_phrasings.json: "
          f"{len(equal_json)} equal {equal_json or ''}")
    ok &= not equal_py and not equal_json

    # 2. no question of mine shares more than 60% of its words with a question template of the generator
    templates = []
    for pool in gen["PHRASINGS"].values():
        for kinds in pool.values():
            templates += kinds.get("ask", [])
    for kinds in gen["MORE_TRAIN_PHRASINGS"].values():   # with memory_train_phrasings.json's, added on load
        templates += kinds.get("ask", [])
    templates += gen["NEVER_SAID"]["heldout"] + [q for q, _ in gen["NEVER_SAID_TRAIN"]]
    templates += [s for s in all_string_literals(py_path) if s.strip().endswith("?")]   # every other '?' string
    templates = sorted(t for t in set(templates) if words(t))
    questions = [(f"{attr}.ask", q) for attr, kinds in PHRASINGS.items() for q in kinds["ask"]]
    questions += [("never_said", q) for q in NEVER_SAID]
    worst, worst_sym, over = (0, "", ""), (0, "", ""), []
    for where, q in questions:
        a = words(q)
        for t in templates:
            b = words(t)
            share, share_sym = len(a & b) / len(a), len(a & b) / min(len(a), len(b))
            if share > 0.6:
                over.append((q, t, round(share, 2)))
            worst = max(worst, (share, q, t))
            if len(b) >= 3:
                worst_sym = max(worst_sym, (share_sym, q, t))
    print(f"copy check 2: {len(questions)} questions of mine vs {len(templates)} question templates of the generator "
          f"(all pools, memory_train_phrasings.json's too, and every other '?' string of the file): "
          f"{len(over)} share more than 60% of their words {over or ''}; highest share {worst[0]:.0%} "
          f"({worst[1]!r} ~ {worst[2]!r}); as a share of the shorter one (templates of 3+ words): highest {worst_sym[0]:.0%} "
          f"({worst_sym[1]!r} ~ {worst_sym[2]!r})")
    ok &= not over

    # 2b. (informational) my statements and updates against the generator's and the json's, by shared words
    gen_states = set()
    for pool in gen["PHRASINGS"].values():
        for kinds in pool.values():
            gen_states |= set(kinds.get("state", []) + kinds.get("update", []))
    for kinds in gen["MORE_TRAIN_PHRASINGS"].values():
        gen_states |= set(kinds.get("state", []) + kinds.get("update", []))
    close = []
    for where, t in mine:
        if where.endswith((".state", ".update")):
            a = words(t)
            best = max((len(a & words(s)) / len(a), s) for s in gen_states)
            if best[0] > 0.6:
                close.append((t, best[1], round(best[0], 2)))
    print(f"statement check (informational): {len(close)} of my statements/updates share more than 60% of their "
          f"words with one of the generator's {len(gen_states)} {close or ''}")

    # 2b'. (informational) my small talk against the generator's small talk of every pool
    gen_talk = [line if isinstance(line, str) else line[0] for lines in gen["SMALL_TALK"].values() for line in lines]
    talk_share = max((len(words(a) & words(b)) / len(words(a)), a, b) for a in SMALL_TALK for b in gen_talk)
    print(f"small talk vs the generator's {len(gen_talk)} lines (informational): highest word share "
          f"{talk_share[0]:.0%} ({talk_share[1]!r} ~ {talk_share[2]!r})")

    # 2c. questions worded unlike the statements of the same kind
    q_vs_s = max((len(words(q) & words(s)) / len(words(q)), q, s) for attr, kinds in PHRASINGS.items()
                 for q in kinds["ask"] for s in kinds["state"] + kinds.get("update", []))
    print(f"questions vs my own statements of the same kind: highest word share {q_vs_s[0]:.0%} "
          f"({q_vs_s[1]!r} ~ {q_vs_s[2]!r})")

    # 3. fresh values: no value (or accepted answer) is a case-insensitive substring of the two files
    texts = {"make_memory_data.py": py_text.lower(), "memory_eval.json": eval_text.lower()}
    extra = {"memory_train_phrasings.json": json.dumps(more_json, ensure_ascii=False).lower(),
             "memory_chats.jsonl": (MAIN / "data" / "memory_chats.jsonl").read_text(encoding="utf-8").lower()}
    values = {"names": NAMES, "cities": CITIES, "origins": [o for o, _ in ORIGINS], "jobs": [j for j, _, _ in JOBS],
              "job activities": [d for _, d, _ in JOBS], "employers": EMPLOYERS, "pets": PETS, "species": SPECIES,
              "hobbies": [h for h, _ in HOBBIES], "foods": FOODS, "allergies": ALLERGIES,
              "birthdays": [b for b, _, _ in BIRTHDAYS]}
    keys = sorted({k for _, k in ORIGINS} | {k for _, _, ks in JOBS for k in ks} | {k for _, k in HOBBIES} |
                  {k for ks in ALSO_ACCEPTED.values() for k in ks})
    for label, group in values.items():
        assert len(set(v.lower() for v in group)) == len(group), f"duplicate {label}"
    found = {f: [(label, v) for label, group in values.items() for v in group if v.lower() in text]
             for f, text in texts.items()}
    found_keys = {f: [k for k in keys if k in text] for f, text in texts.items()}
    found_extra = {f: [(label, v) for label, group in values.items() for v in group if v.lower() in text]
                   for f, text in extra.items()}
    print("fresh values: " + ", ".join(f"{len(g)} {label}" for label, g in values.items()) +
          f" ({sum(len(g) for g in values.values())} values); found as a case-insensitive substring of " +
          "; ".join(f"{f}: {len(v)} {v or ''}" for f, v in found.items()))
    print(f"  the {len(keys)} extra accepted-answer keys (origin keys, job and hobby keys, alternatives): found in " +
          "; ".join(f"{f}: {len(v)} {v or ''}" for f, v in found_keys.items()) + " (informational)")
    print("  values also looked up in " + "; ".join(f"{f}: {len(v)} found {v or ''}" for f, v in found_extra.items())
          + " (informational)")
    ok &= not any(found.values())

    # 4. the answers are meaningful: each job/hobby key appears in the value's wording; each answer appears in the
    # turn that states it and in no other turn of the user, no small-talk line and no question
    for noun, do, ks in JOBS:
        assert any(k in noun.lower() for k in ks) and any(k in do.lower() for k in ks), noun
    for hobby, k in HOBBIES:
        assert k in hobby.lower(), hobby
    problems = []
    talk = [s.lower() for s in SMALL_TALK]
    for user, meta in zip(data["users"], metas):
        turns = [t["content"].lower() for t in user["turns"]]
        asks = " ".join(q["ask"].lower() for q in user["questions"])
        for q in user["questions"]:
            if q["kind"] == "abstain":
                continue
            where = [i for i, t in enumerate(turns) if any(a in t for a in q["answer"])]
            if q["kind"] == "update":
                if where != [len(turns) - 1]:
                    problems.append((user["name"], "new value", q["answer"], where))
                old_where = [i for i, t in enumerate(turns) if any(a in t for a in q["old"])]
                if len(old_where) != 1 or old_where[0] == len(turns) - 1:
                    problems.append((user["name"], "old value", q["old"], old_where))
                if set(q["answer"]) & set(q["old"]):
                    problems.append((user["name"], "old = new", q["answer"]))
            elif len(where) != 1 or where[0] == len(turns) - 1:
                problems.append((user["name"], "recall", q["answer"], where))
            if any(a in s for a in q["answer"] + q.get("old", []) for s in talk):
                problems.append((user["name"], "in small talk", q["answer"]))
            if any(a in asks for a in q["answer"]):
                problems.append((user["name"], "in a question", q["answer"]))
            if min(map(len, q["answer"])) < 4:
                problems.append((user["name"], "short answer", q["answer"]))
    print(f"answer checks: {len(problems)} problems {problems or ''}")
    ok &= not problems
    return ok


def main():
    data, metas = build()
    ok = check(data, metas)
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    if not ok:
        print("checks failed: not written", file=sys.stderr)
        sys.exit(1)
    OUT.write_text(text, encoding="utf-8")
    users = data["users"]
    kinds = {k: sum(q["kind"] == k for u in users for q in u["questions"]) for k in ("recall", "update", "abstain")}
    print(f"wrote {OUT}: {len(users)} users, {sum(kinds.values())} questions {kinds}; "
          f"name said first {sum(m['told'][0] == 'name' for m in metas)}/{len(users)}; "
          f"two facts merged {sum(m['merged'] for m in metas)}/{len(users)}; "
          f"updated: {dict(sorted(__import__('collections').Counter(m['updated'] for m in metas).items()))}; "
          f"facts besides the name (incl. the updated one): "
          f"{dict(sorted(__import__('collections').Counter(len(m['told']) - 1 for m in metas).items()))}; "
          f"abstain: {sum(m['abstain'] == 'never_said' for m in metas)} never-said, "
          f"{sum(m['abstain'].startswith('pool:') for m in metas)} unstated pool facts")


if __name__ == "__main__":
    main()
