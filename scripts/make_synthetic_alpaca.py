#!/usr/bin/env python3
"""Generate a small synthetic instruction-tuning set in the Stanford Alpaca format.

    python3 scripts/make_synthetic_alpaca.py

writes experiments/data/synthetic_alpaca.json: a JSON list of 256 records
{"instruction", "input", "output"}. Pure python (`random.Random` with a fixed
seed, no network, no set/dict-order dependence), so the output is
deterministic. Verified byte-identical by running it twice, with different
PYTHONHASHSEED values, and comparing sha256sum of the two outputs.

The records are built from templates of several instruction kinds (rewrite,
summarise, list, classify, explain, translate, math, short question answering,
longer writing) so the text reads plausibly. Length distributions roughly
follow Alpaca: instructions of about 5-30 words, about 40% of records with a
non-empty input (5-60 words), outputs of 1-250 words with a long tail and a
mean of about 45 words. Current output: 256 records, 38.7% with input;
words per field (mean / median / max): instruction 10.5 / 9 / 23, non-empty
input 16.8 / 9 / 53, output 47.1 / 20 / 237.
"""

import json
import os
import random
import statistics

SEED = 20230313  # Alpaca release date
N_RECORDS = 256
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_PATH = os.path.join(REPO, "experiments", "data", "synthetic_alpaca.json")

rng = random.Random(SEED)


def cap(s):
    return s[0].upper() + s[1:]


def words(s):
    return len(s.split())


# ----------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------

TOPICS = [
    "renewable energy", "climate change", "remote work", "machine learning",
    "healthy eating", "public transportation", "online education", "social media",
    "urban gardening", "space exploration", "personal finance", "time management",
    "recycling", "artificial intelligence", "regular exercise", "water conservation",
    "cybersecurity", "electric cars", "reading for pleasure", "small businesses",
    "meditation", "teamwork", "volunteering", "good sleep habits", "cloud computing",
    "learning a second language", "local tourism", "open source software",
]
GROUPS = [
    "students", "small business owners", "teachers", "older adults",
    "software developers", "parents", "city residents", "farmers", "nurses",
    "young professionals", "local communities", "remote teams",
]
BENEFITS = [
    "save time", "reduce costs", "stay healthy", "learn new skills",
    "make better decisions", "communicate more clearly", "protect the environment",
    "build stronger relationships", "stay focused", "manage stress",
    "plan for the future", "work more efficiently",
]
CHALLENGES = [
    "high initial costs", "a lack of reliable information",
    "limited access in rural areas", "privacy concerns", "resistance to change",
    "the need for proper training", "a shortage of skilled workers",
    "unclear regulations",
]
ACTIONS = [
    "set clear and realistic goals", "start with a small project",
    "talk to people who have experience", "read a few trusted sources",
    "track your progress every week", "make a simple plan and follow it",
    "ask for feedback regularly", "set aside a fixed time each day",
    "break large tasks into smaller steps", "celebrate small successes",
    "keep a short journal of what you learn", "join a local group or online forum",
    "review your budget at the end of each month", "remove distractions from your workspace",
]
OUTCOMES = [
    "productivity", "mental health", "long-term savings", "the quality of life",
    "student performance", "public health", "customer satisfaction",
    "the local economy",
]

# Sentences about a topic. Slots: {T} topic, {G} group, {B} benefit,
# {C} challenge, {A} action, {O} outcome.
TOPIC_SENTENCES = [
    "{T} can help {G} {B}.",
    "Many experts believe that {T} will play an important role in the coming decade.",
    "One of the main advantages of {T} is that it allows people to {B}.",
    "However, {T} also comes with challenges, such as {C}.",
    "For example, {G} who take {T} seriously often find it easier to {B}.",
    "It is important to consider both the benefits and the risks before making a decision.",
    "In recent years, interest in {T} has grown steadily around the world.",
    "Governments and organizations are investing more resources in {T}.",
    "A simple first step is to {A}.",
    "Over time, even small changes can lead to significant improvements.",
    "Research suggests that {T} has a positive effect on {O}.",
    "Critics point out that {C} can slow down progress.",
    "Another benefit is that {T} encourages people to think about the long term.",
    "{T} can be especially useful for {G}, who often have limited time and resources.",
    "To get the most out of {T}, it helps to {A}.",
    "The results may not be visible immediately, but they tend to grow over time.",
    "Clear communication and patience are essential during the early stages.",
    "Technology has made {T} more accessible than ever before.",
    "At the same time, it is worth remembering that no single solution works for everyone.",
    "Many people also find that {T} improves {O}.",
    "Sharing experiences with others can make the process more enjoyable.",
    "It is a good idea to start small and adjust the approach as you learn.",
    "Ultimately, the success of {T} depends on consistent effort.",
    "Schools and workplaces can support this by offering practical guidance.",
    "When people work together, the benefits become much easier to achieve.",
]
CONCLUSIONS = [
    "In conclusion, {T} offers clear benefits for {G}, as long as it is approached carefully.",
    "Overall, {T} is a valuable investment for anyone who wants to {B}.",
    "In short, {T} is worth the effort, even though it requires patience.",
]


def topic_slots():
    return dict(T=rng.choice(TOPICS), G=rng.choice(GROUPS), B=rng.choice(BENEFITS),
                C=rng.choice(CHALLENGES), A=rng.choice(ACTIONS), O=rng.choice(OUTCOMES))


def fill(template, slots):
    s = template.format(**slots)
    return cap(s)


OPENERS = [TOPIC_SENTENCES[i] for i in (0, 1, 6, 7, 10, 17)]


def topic_paragraph(slots, target_words, conclusion=True, first_sentence=None,
                    max_words=245):
    """Sentences about one topic, opened by an introducing sentence and added
    (without repetition) until about target_words words, never above max_words."""
    if first_sentence is None:
        first_sentence = rng.choice(OPENERS)
    pool = [t for t in TOPIC_SENTENCES if t != first_sentence]
    rng.shuffle(pool)
    pool.insert(0, first_sentence)
    ending = fill(rng.choice(CONCLUSIONS), slots) if conclusion and target_words > 40 else ""
    budget = max_words - words(ending)
    out = []
    n = 0
    for t in pool:
        s = fill(t, slots)
        if out and n + words(s) > budget:
            break
        out.append(s)
        n += words(s)
        if n >= target_words:
            break
    if ending:
        out.append(ending)
    return " ".join(out)


def long_tail_length(median, sigma, lo, hi):
    """Log-normal word count clipped to [lo, hi]."""
    v = int(round(rng.lognormvariate(0.0, sigma) * median))
    return max(lo, min(hi, v))


# Optional instruction suffixes (lengthen some instructions, as in Alpaca).
SUFFIXES = [
    "Keep your answer short.",
    "Use simple language that a beginner could understand.",
    "Make sure your answer is clear and well organized.",
    "Include at least one concrete example.",
    "Write your answer in a friendly and professional tone.",
    "Explain your reasoning in one or two sentences.",
]


def maybe_suffix(instr, p):
    if rng.random() < p:
        return instr + " " + rng.choice(SUFFIXES)
    return instr


# ----------------------------------------------------------------------------
# Instruction kinds. Each returns (instruction, input, output).
# ----------------------------------------------------------------------------

# Simple sentences: (3rd person present, past, past participle, base).
VERBS = [
    ("writes", "wrote", "written", "write"), ("prepares", "prepared", "prepared", "prepare"),
    ("cleans", "cleaned", "cleaned", "clean"), ("designs", "designed", "designed", "design"),
    ("repairs", "repaired", "repaired", "repair"), ("paints", "painted", "painted", "paint"),
    ("reviews", "reviewed", "reviewed", "review"), ("delivers", "delivered", "delivered", "deliver"),
    ("organizes", "organized", "organized", "organize"), ("builds", "built", "built", "build"),
]
SUBJECTS = ["teacher", "committee", "chef", "engineer", "student", "manager", "gardener",
            "author", "young artist", "team leader", "volunteer", "mechanic"]
OBJECTS = ["the report", "the meal", "the classroom", "a new bridge", "the old bicycle",
           "the garden fence", "the proposal", "the package", "the annual meeting",
           "a small wooden house", "the website", "the kitchen"]
TIMES = ["morning", "week", "month", "weekend", "year"]
ADJS = ["experienced", "careful", "talented", "busy", "patient", "friendly"]


def kind_rewrite():
    v = rng.choice(VERBS)
    subj = rng.choice(ADJS) + " " + rng.choice(SUBJECTS)
    obj = rng.choice(OBJECTS)
    mode = rng.randrange(4)
    if mode == 0:
        instr = rng.choice(["Rewrite the following sentence in the passive voice.",
                            "Change the following sentence from active to passive voice.",
                            "Convert this sentence into the passive voice."])
        inp = "The %s %s %s yesterday." % (subj, v[1], obj)
        out = "%s was %s by the %s yesterday." % (cap(obj), v[2], subj)
    elif mode == 1:
        instr = rng.choice(["Correct the grammar in the following sentence.",
                            "Edit the sentence below so that it is grammatically correct.",
                            "Find and fix the grammatical error in this sentence."])
        inp = "The %s %s %s last %s." % (subj, v[3], obj, rng.choice(TIMES))
        out = inp.replace(" %s " % v[3], " %s " % v[1], 1)
        if rng.random() < 0.4:
            out = out + " The verb \"%s\" should be in the past tense, \"%s\"." % (v[3], v[1])
    elif mode == 2:
        t = rng.choice(TIMES)
        instr = rng.choice(["Rewrite the following sentence in the past tense.",
                            "Change the tense of this sentence to the simple past."])
        inp = "The %s %s %s every %s." % (subj, v[0], obj, t)
        out = "The %s %s %s every %s." % (subj, v[1], obj, t)
    else:
        slots = topic_slots()
        instr = rng.choice(["Rewrite the following sentence to make it more concise.",
                            "Paraphrase the sentence below using simpler words.",
                            "Make the following sentence shorter without changing its meaning."])
        inp = ("It is widely believed by a large number of people that %s can in many "
               "cases help %s to %s." % (slots["T"], slots["G"], slots["B"]))
        out = "Many people believe %s can help %s %s." % (slots["T"], slots["G"], slots["B"])
    return maybe_suffix(instr, 0.15), inp, out


def kind_summarise():
    slots = topic_slots()
    first = "{T} can help {G} {B}."
    para = topic_paragraph(slots, rng.randint(30, 48), conclusion=False,
                           first_sentence=first)
    while words(para) > 60:
        para = para.rsplit(". ", 1)[0] + "."
    instr = rng.choice([
        "Summarize the following paragraph in one sentence.",
        "Write a one-sentence summary of the text below.",
        "Give a brief summary of the following passage.",
        "Summarize the main idea of this paragraph.",
        "Read the paragraph below and summarize its key message in a single sentence.",
    ])
    # Only summarise what the passage actually says.
    if fill("However, {T} also comes with challenges, such as {C}.", slots) in para:
        out = fill("{T} can help {G} {B}, although it also brings challenges such as {C}.",
                   slots)
    else:
        out = fill("The passage explains that {T} can help {G} {B}.", slots)
    for t in ["A simple first step is to {A}.", "To get the most out of {T}, it helps to {A}."]:
        if fill(t, slots) in para and rng.random() < 0.6:
            out += " " + fill("It suggests that a good way to begin is to {A}.", slots)
            break
    return maybe_suffix(instr, 0.15), para, out


LIST_SUBJECTS = [
    ("tips for improving {T}", "tip"), ("ways to {B}", "way"),
    ("benefits of {T}", "benefit"), ("steps for getting started with {T}", "step"),
    ("habits that help {G} {B}", "habit"),
]
LIST_ITEM_TEMPLATES = [
    "{A}.", "{A} so that you can {B}.", "Learn from {G} who have done it before.",
    "Focus on {O} rather than short-term results.", "Be patient and consistent.",
    "Avoid common problems such as {C}.", "Review what works and what does not.",
    "Use free online resources to learn the basics.", "Share your progress with a friend.",
]


def kind_list():
    slots = topic_slots()
    subject, _ = rng.choice(LIST_SUBJECTS)
    n = rng.choice([3, 3, 4, 5, 5, 5, 6, 7, 8, 10])
    nword = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
             10: "ten"}[n]
    instr = rng.choice([
        "List %s %s." % (nword, subject),
        "Generate a list of %s %s." % (nword, subject),
        "Give me %s %s." % (nword, subject),
        "Make a list of %s %s, with a short explanation for each." % (nword, subject),
    ]).format(**slots)
    items = []
    actions = list(ACTIONS)
    rng.shuffle(actions)
    templates = list(LIST_ITEM_TEMPLATES)
    rng.shuffle(templates)
    for i in range(n):
        s = dict(slots)
        s["A"] = actions[i % len(actions)]
        s["B"] = rng.choice(BENEFITS)
        items.append("%d. %s" % (i + 1, fill(templates[i % len(templates)], s)))
    inp = ""
    if rng.random() < 0.12:
        inp = topic_paragraph(slots, rng.randint(20, 45), conclusion=False)
        while words(inp) > 60:
            inp = inp.rsplit(". ", 1)[0] + "."
        instr = rng.choice(["Extract the key points from the following text as a list.",
                            "Based on the text below, list practical suggestions."])
    return maybe_suffix(instr, 0.2), inp, "\n".join(items)


ANIMALS = [("dolphin", "mammal"), ("tiger", "mammal"), ("whale", "mammal"),
           ("bat", "mammal"), ("horse", "mammal"), ("eagle", "bird"),
           ("penguin", "bird"), ("sparrow", "bird"), ("owl", "bird"),
           ("lizard", "reptile"), ("crocodile", "reptile"), ("turtle", "reptile"),
           ("snake", "reptile")]
REVIEWS_POS = ["The food was delicious and the staff were very friendly.",
               "I loved this book, the characters felt real and the ending was perfect.",
               "The new update makes the app much faster and easier to use.",
               "Our guide was knowledgeable, funny, and always on time.",
               "This is the most comfortable pair of shoes I have ever owned."]
REVIEWS_NEG = ["The delivery was late and the package arrived damaged.",
               "I waited almost an hour and nobody answered my questions.",
               "The movie was far too long and the story made no sense.",
               "The battery dies after two hours, which is very disappointing.",
               "The room was noisy, dirty, and much smaller than in the photos."]
REVIEWS_NEU = ["The store opens at nine and closes at six on weekdays.",
               "The package contains two cables, a charger, and a short manual.",
               "The meeting has been moved from Tuesday to Thursday afternoon."]
SENTENCE_TYPES = [("Please close the door when you leave the room.", "command"),
                  ("Could you send me the report by Friday afternoon?", "question"),
                  ("The museum is closed on Mondays during the winter.", "statement"),
                  ("Turn off the lights before you go to bed.", "command"),
                  ("Have you ever visited the old part of the city?", "question"),
                  ("Water boils at one hundred degrees Celsius at sea level.", "statement")]


def kind_classify():
    mode = rng.randrange(5)
    if mode == 0:
        label = rng.choice(["positive", "negative", "neutral"])
        inp = rng.choice({"positive": REVIEWS_POS, "negative": REVIEWS_NEG,
                          "neutral": REVIEWS_NEU}[label])
        instr = rng.choice([
            "Classify the sentiment of the following review as positive, negative, or neutral.",
            "Determine whether the sentiment of this sentence is positive, negative, or neutral.",
            "Analyze the sentiment of the text below.",
        ])
        out = rng.choice([cap(label), "The sentiment is %s." % label,
                          "%s." % cap(label)])
    elif mode == 1:
        chosen = rng.sample(ANIMALS, rng.randint(5, 7))
        inp = ", ".join(a for a, _ in chosen)
        instr = rng.choice(["Classify the following animals as mammals, birds, or reptiles.",
                            "Group these animals by their class."])
        lines = []
        for cls in ["mammal", "bird", "reptile"]:
            members = [a for a, c in chosen if c == cls]
            if members:
                lines.append("%ss: %s" % (cap(cls), ", ".join(members)))
        out = "\n".join(lines)
    elif mode == 2:
        inp, label = rng.choice(SENTENCE_TYPES)
        instr = "Categorize the following sentence as a statement, a question, or a command."
        out = rng.choice([cap(label), "This sentence is a %s." % label])
    elif mode == 3:
        item, label = rng.choice([("tomato", "fruit"), ("carrot", "vegetable"),
                                  ("cucumber", "fruit"), ("spinach", "vegetable"),
                                  ("avocado", "fruit"), ("potato", "vegetable")])
        art = "an" if item[0] in "aeiou" else "a"
        instr = "Is %s %s a fruit or a vegetable?" % (art, item)
        inp = ""
        out = "%s %s is a %s." % (cap(art), item, label)
        if label == "fruit" and rng.random() < 0.6:
            out += (" Botanically it is a fruit because it develops from the flower and "
                    "contains seeds, although it is often cooked like a vegetable.")
    else:
        inp, label = rng.choice(FACTS_OPINIONS)
        if "{T}" in inp:
            inp = fill(inp, topic_slots())
        instr = "Classify the following sentence as either a fact or an opinion."
        out = rng.choice([cap(label), "This sentence is %s %s." % (
            "an" if label == "opinion" else "a", label)])
    return maybe_suffix(instr, 0.15), inp, out


FACTS_OPINIONS = [
    ("Water freezes at zero degrees Celsius at sea level.", "fact"),
    ("The Pacific is the largest ocean on Earth.", "fact"),
    ("A year usually has three hundred sixty-five days.", "fact"),
    ("The human heart has four chambers.", "fact"),
    ("Summer is the best season of the year.", "opinion"),
    ("Chocolate ice cream tastes much better than vanilla.", "opinion"),
    ("{T} is the most exciting subject to learn about today.", "opinion"),
    ("Everyone should spend more time on {T}.", "opinion"),
]


PROVERBS = [
    ("The early bird catches the worm.",
     "This proverb means that people who start early or act quickly are more likely to succeed."),
    ("Do not count your chickens before they hatch.",
     "This proverb warns against relying on a good result before it has actually happened."),
    ("Actions speak louder than words.",
     "This proverb means that what people do shows their true intentions better than what they say."),
    ("A journey of a thousand miles begins with a single step.",
     "This proverb means that even the largest goals are reached by starting with a small first action."),
    ("Too many cooks spoil the broth.",
     "This proverb means that when too many people try to control a task, the result is often worse."),
]
CONCEPTS = [
    ("photosynthesis", "Photosynthesis is the process plants use to turn sunlight, water, and carbon dioxide into sugar and oxygen."),
    ("inflation", "Inflation is the general rise in prices over time, which means that the same amount of money buys fewer goods."),
    ("the water cycle", "The water cycle describes how water evaporates, forms clouds, falls as rain or snow, and returns to rivers and oceans."),
    ("gravity", "Gravity is the force that pulls objects with mass toward each other, which is why things fall to the ground."),
    ("a neural network", "A neural network is a computer model made of layers of simple units that learn patterns from examples."),
    ("compound interest", "Compound interest is interest earned both on the original amount and on the interest that has already been added."),
    ("supply and demand", "Supply and demand describes how the price of a product depends on how much is available and how much people want it."),
    ("the greenhouse effect", "The greenhouse effect is the warming of the Earth caused by gases in the atmosphere that trap heat from the sun."),
]
CONCEPT_FOLLOWUPS = [
    "It is one of the basic ideas that helps us understand the world around us.",
    "A simple way to picture it is to think about something you see every day.",
    "Scientists and teachers often use examples from daily life to explain it.",
    "Understanding it helps people make better decisions in many situations.",
    "It has been studied for a long time, and researchers still learn new details about it.",
    "Small changes can have large effects over time.",
    "Many everyday technologies depend on this idea, even if we rarely notice it.",
]


def kind_explain():
    mode = rng.randrange(6)
    if mode == 0:
        proverb, meaning = rng.choice(PROVERBS)
        instr = rng.choice(["Explain the meaning of the following proverb.",
                            "What does this saying mean?"])
        out = meaning
        if rng.random() < 0.5:
            out += " " + rng.choice(CONCEPT_FOLLOWUPS[3:5])
        return maybe_suffix(instr, 0.3), proverb, out
    if mode in (1, 2):
        concept, definition = rng.choice(CONCEPTS)
        instr = rng.choice(["Explain %s in simple terms." % concept,
                            "Describe what %s is and why it matters." % concept,
                            "What is %s? Explain it to a high school student." % concept])
        target = long_tail_length(45, 0.5, 12, 110)
        follow = list(CONCEPT_FOLLOWUPS)
        rng.shuffle(follow)
        out = [definition]
        for s in follow:
            if words(" ".join(out)) >= target:
                break
            out.append(s)
        return maybe_suffix(instr, 0.45), "", " ".join(out)
    slots = topic_slots()
    instr = rng.choice([
        "Explain why {T} is important for {G}.",
        "What are the main benefits of {T}?",
        "Describe the advantages and disadvantages of {T}.",
        "Explain how {T} can help {G} {B}.",
        "Why should {G} care about {T}?",
        "Discuss the impact of {T} on {O}.",
    ]).format(**slots)
    target = long_tail_length(90, 0.55, 25, 235)
    return maybe_suffix(instr, 0.45), "", topic_paragraph(slots, target)


TRANSLATIONS = [
    ("I would like a cup of coffee, please.", "Me gustaría una taza de café, por favor.",
     "Je voudrais une tasse de café, s'il vous plaît."),
    ("Where is the nearest train station?", "¿Dónde está la estación de tren más cercana?",
     "Où est la gare la plus proche ?"),
    ("The weather is very nice today.", "Hoy hace muy buen tiempo.",
     "Il fait très beau aujourd'hui."),
    ("My sister works at the hospital.", "Mi hermana trabaja en el hospital.",
     "Ma sœur travaille à l'hôpital."),
    ("We are going to the beach tomorrow.", "Mañana vamos a la playa.",
     "Nous allons à la plage demain."),
    ("Can you help me with my homework?", "¿Puedes ayudarme con mi tarea?",
     "Peux-tu m'aider avec mes devoirs ?"),
    ("The library closes at eight in the evening.", "La biblioteca cierra a las ocho de la noche.",
     "La bibliothèque ferme à huit heures du soir."),
    ("I have been learning to cook this year.", "Este año he estado aprendiendo a cocinar.",
     "J'apprends à cuisiner cette année."),
    ("Thank you very much for your help.", "Muchas gracias por tu ayuda.",
     "Merci beaucoup pour ton aide."),
    ("How much does this book cost?", "¿Cuánto cuesta este libro?",
     "Combien coûte ce livre ?"),
    ("The children are playing in the park.", "Los niños están jugando en el parque.",
     "Les enfants jouent dans le parc."),
    ("I do not understand the question.", "No entiendo la pregunta.",
     "Je ne comprends pas la question."),
]


def kind_translate():
    en, es, fr = rng.choice(TRANSLATIONS)
    lang, target = rng.choice([("Spanish", es), ("French", fr)])
    if rng.random() < 0.2:
        # reverse direction
        instr = rng.choice(["Translate the following sentence from %s into English." % lang,
                            "What does this %s sentence mean in English?" % lang])
        return instr, target, en
    instr = rng.choice(["Translate the following sentence into %s." % lang,
                        "Translate this text into %s." % lang,
                        "How would you say the following sentence in %s?" % lang])
    return maybe_suffix(instr, 0.1), en, target


def kind_math():
    mode = rng.randrange(7)
    inp = ""
    if mode == 0:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice(["+", "-", "*"])
        c = a + b if op == "+" else (a - b if op == "-" else a * b)
        instr = rng.choice(["Calculate the value of %d %s %d." % (a, op, b),
                            "What is the result of %d %s %d?" % (a, op, b)])
        out = rng.choice(["%d" % c, "%d %s %d = %d" % (a, op, b, c)])
    elif mode == 1:
        p, n = rng.choice([5, 10, 15, 20, 25, 50, 75]), rng.randint(2, 80) * 20
        instr = "What is %d%% of %d?" % (p, n)
        out = "%d%% of %d is %s." % (p, n, fmt(p * n / 100))
    elif mode == 2:
        a, x = rng.randint(2, 9), rng.randint(-10, 12)
        b = rng.randint(1, 30)
        c = a * x + b
        instr = rng.choice(["Solve the following equation for x.", "Find the value of x."])
        inp = "%dx + %d = %d" % (a, b, c)
        out = ("Subtract %d from both sides to get %dx = %d. Then divide both sides by %d, "
               "so x = %d." % (b, a, c - b, a, x))
    elif mode == 3:
        s, h = rng.choice([40, 60, 80, 90, 120]), rng.randint(2, 6)
        instr = ("If a train travels at %d kilometers per hour for %d hours, how far does "
                 "it travel?" % (s, h))
        out = ("The train travels %d kilometers, because distance equals speed times time: "
               "%d x %d = %d." % (s * h, s, h, s * h))
    elif mode == 4:
        nums = [rng.randint(1, 60) for _ in range(rng.randint(5, 8))]
        instr = rng.choice(["Find the average of the following numbers.",
                            "Compute the mean of these numbers."])
        inp = ", ".join(str(v) for v in nums)
        out = "The average is %s." % fmt(sum(nums) / len(nums))
    elif mode == 5:
        l, w = rng.randint(2, 30), rng.randint(2, 30)
        instr = "Find the area of a rectangle with a length of %d cm and a width of %d cm." % (l, w)
        out = "The area of the rectangle is %d square centimeters (%d x %d)." % (l * w, l, w)
    else:
        n = rng.choice([4, 6, 8, 9, 10, 12, 15, 21, 25, 27, 31, 37, 49, 51, 53, 97])
        instr = "Is %d a prime number? Explain your answer." % n
        divs = [d for d in range(2, n) if n % d == 0]
        if divs:
            out = "No, %d is not a prime number because it is divisible by %d." % (n, divs[0])
        else:
            out = "Yes, %d is a prime number because its only divisors are 1 and %d." % (n, n)
    return instr, inp, out


def fmt(v):
    s = ("%.2f" % v).rstrip("0").rstrip(".")
    return s


CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Canada", "Ottawa"),
            ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Kenya", "Nairobi"),
            ("Italy", "Rome"), ("Egypt", "Cairo"), ("India", "New Delhi"),
            ("Mexico", "Mexico City"), ("Norway", "Oslo"), ("Argentina", "Buenos Aires")]
CATEGORIES = [("primary colors", ["red", "blue", "yellow"]),
              ("planets in our solar system", ["Mercury", "Venus", "Earth", "Mars", "Jupiter"]),
              ("programming languages", ["Python", "Java", "C++", "JavaScript", "Rust"]),
              ("types of renewable energy", ["solar power", "wind power", "hydropower",
                                             "geothermal energy"]),
              ("musical instruments", ["piano", "violin", "guitar", "flute", "drums"]),
              ("fruits that are high in vitamin C", ["oranges", "strawberries", "kiwis",
                                                     "guavas"])]
NUMWORDS = {2: "two", 3: "three", 4: "four"}


def kind_qa():
    if rng.random() < 0.5:
        country, city = rng.choice(CAPITALS)
        instr = rng.choice(["What is the capital of %s?" % country,
                            "Name the capital city of %s." % country])
        out = rng.choice([city, "The capital of %s is %s." % (country, city)])
    else:
        cat, members = rng.choice(CATEGORIES)
        k = rng.randint(2, min(4, len(members)))
        chosen = rng.sample(members, k)
        instr = rng.choice(["Can you name %s %s?" % (NUMWORDS[k], cat),
                            "Give %s examples of %s." % (NUMWORDS[k], cat)])
        out = rng.choice([", ".join(chosen),
                          "%s and %s." % (", ".join(cap(c) if i == 0 else c
                                                    for i, c in enumerate(chosen[:-1])),
                                          chosen[-1])])
    return instr, "", out


CHARACTERS = [("Maya", "she", "her", "young inventor"), ("Leo", "he", "his", "shy student"),
              ("Ana", "she", "her", "retired teacher"), ("Tom", "he", "his", "old fisherman"),
              ("Zara", "she", "her", "curious scientist"), ("Sam", "he", "his", "baker")]
PLACES = ["a small village by the sea", "a busy city", "a quiet mountain town",
          "a farm at the edge of a forest", "an island far from the mainland"]
EVENTS = ["finds a mysterious map", "learns to play the piano", "discovers a hidden garden",
          "builds a small boat", "makes an unexpected friend", "enters a cooking contest"]
STORY_SENTENCES = [
    "Every morning, {p} walked past the old library and wondered what was inside.",
    "One day, something unusual caught {q} attention.",
    "At first, {p} was not sure what to do.",
    "{N} decided to ask a neighbor for advice.",
    "The neighbor smiled and told {q} an old story about the place.",
    "The next few weeks were full of small surprises.",
    "{N} made mistakes, but {p} learned something new from each one.",
    "Some people in town laughed at the idea, while others offered to help.",
    "Slowly, the plan began to take shape.",
    "There were moments when {p} wanted to give up.",
    "A letter from an old friend reminded {q} why the work mattered.",
    "On the final day, the whole town gathered to see what had happened.",
    "Nobody expected the result to be so beautiful.",
    "{N} realized that the journey had been more important than the goal.",
    "From that day on, {p} looked at the world a little differently.",
    "Years later, people still talked about that summer.",
    "The rain stopped, and the sky turned a bright shade of orange.",
    "{N} felt proud, tired, and happy all at the same time.",
]
EMAIL_REPLY_INPUTS = [
    "Hi, I ordered a lamp from your store two weeks ago and it still has not arrived. "
    "Could you please tell me when I can expect the delivery? Thank you, Emma",
    "Hello, I would like to know whether your cooking class on Saturday still has free "
    "places, and how much it costs for two people. Best regards, David",
]


def kind_write():
    mode = rng.randrange(5)
    if mode <= 1:
        name, p, q, role = rng.choice(CHARACTERS)
        place, event = rng.choice(PLACES), rng.choice(EVENTS)
        instr = rng.choice(["Write a short story about a %s who %s." % (role, event),
                            "Create a short story in which a %s %s." % (role, event),
                            "Write a children's story about a %s who %s. The story should "
                            "have a clear beginning, middle, and end." % (role, event)])
        target = long_tail_length(130, 0.35, 70, 235)
        s = ["Once upon a time, a %s named %s lived in %s." % (role, name, place),
             "One spring, %s %s." % (name, event.replace("finds", "found")
                                     .replace("learns", "learned").replace("discovers", "discovered")
                                     .replace("builds", "built").replace("makes", "made")
                                     .replace("enters", "entered"))]
        pool = list(STORY_SENTENCES)
        rng.shuffle(pool)
        for t in pool:
            if words(" ".join(s)) >= target:
                break
            s.append(cap(t.format(p=p, q=q, N=name)))
        return instr, "", " ".join(s)
    if mode == 2 and rng.random() < 0.5:
        inp = rng.choice(EMAIL_REPLY_INPUTS)
        name = inp.rsplit(" ", 1)[1]
        instr = "Write a polite reply to the following customer email."
        if "lamp" in inp:
            body = ("Thank you for your message, and I am sorry that your order has not "
                    "arrived yet. I have checked the tracking information and the package is "
                    "currently at the local delivery center. It should reach you within the "
                    "next two working days. If it does not arrive by then, please let us know "
                    "and we will send a replacement free of charge.")
        else:
            body = ("Thank you for your interest in our cooking class. There are still a few "
                    "free places on Saturday. The price is 40 dollars per person, so 80 dollars "
                    "for two people, including all ingredients. You can book directly on our "
                    "website or reply to this email.")
        return instr, inp, "Dear %s,\n\n%s\n\nBest regards,\nCustomer Service" % (name, body)
    slots = topic_slots()
    instr = rng.choice([
        "Write a short essay about {T}.",
        "Write a blog post about how {T} can help {G}.",
        "Write a persuasive paragraph encouraging {G} to learn more about {T}.",
        "Compose a short article describing the future of {T}.",
    ]).format(**slots)
    target = long_tail_length(120, 0.4, 60, 235)
    return maybe_suffix(instr, 0.45), "", topic_paragraph(slots, target)


KINDS = [
    (kind_qa, 8), (kind_classify, 11), (kind_math, 12), (kind_rewrite, 10),
    (kind_translate, 6), (kind_summarise, 8), (kind_list, 14), (kind_explain, 16),
    (kind_write, 15),
]


def make_record():
    total = sum(w for _, w in KINDS)
    r = rng.uniform(0, total)
    for fn, w in KINDS:
        r -= w
        if r <= 0:
            break
    instr, inp, out = fn()
    return {"instruction": instr, "input": inp, "output": out}


def main():
    records = []
    seen = []
    while len(records) < N_RECORDS:
        rec = make_record()
        key = (rec["instruction"], rec["input"])
        if key in seen:  # avoid exact duplicate prompts
            continue
        seen.append(key)
        records.append(rec)

    for rec in records:
        assert 1 <= words(rec["output"]) <= 250, rec
        assert rec["input"] == "" or 5 <= words(rec["input"]) <= 60, rec
        assert 5 <= words(rec["instruction"]) <= 30, rec

    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="utf-8", newline="\n") as f:
        json.dump(records, f, indent=4, ensure_ascii=False)
        f.write("\n")

    print("wrote %d records to %s" % (len(records), os.path.relpath(OUT_PATH, REPO)))
    n_inp = sum(1 for r in records if r["input"])
    print("non-empty input: %d / %d (%.1f%%)" % (n_inp, len(records),
                                                 100.0 * n_inp / len(records)))
    for field in ["instruction", "input", "output"]:
        ws = [words(r[field]) for r in records if r[field] or field != "input"]
        label = field + (" (non-empty)" if field == "input" else "")
        print("%-20s words: mean %.1f, median %.1f, min %d, max %d"
              % (label, statistics.mean(ws), statistics.median(ws), min(ws), max(ws)))


if __name__ == "__main__":
    main()
