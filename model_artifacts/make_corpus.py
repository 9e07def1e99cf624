"""Writes data/comments.csv: the demo corpus in the Jigsaw Unintended Bias CSV layout.

The sentences below were written by hand for this repo (mild, but the kind of thing online
comment sections hold). Comments are composed from them with a seeded RNG: an optional lead,
one core sentence that carries the labels, an optional tail, and typos for a share of them.
Labels are fractions of 10 simulated annotators, each voting with the core's probability
plus noise, as in Jigsaw; positive means >= 0.5. The split is by core sentence, so held-out
comments say things the model never saw in training. Re-run only to change the corpus:

    python model_artifacts/make_corpus.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

LABELS = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit"]
OUT = Path(__file__).resolve().parent / "data" / "comments.csv"
ANNOTATORS = 10

LEADS = [
    "Honestly,", "Lol", "Ok so", "Read the article again.", "Wow.", "Not gonna lie,", "Seriously?",
    "Again with this.", "Just saw the update.", "First time posting here.", "Same thing every patch.",
    "Imo", "Tbh", "I mean,", "As someone who plays daily,", "Funny how", "Look,", "Well",
    "Ugh.", "Here we go.", "Quick question.", "Agreed with the OP.", "Hmm.", "Listen,",
]
TAILS = [
    "", "", "", "Just saying.", "lol", "Change my mind.", "Thanks for reading.", "smh", "Whatever.",
    "See you in the next thread.", "Facts.", "Anyway.", "👍", ":)", "jk... or am I", "End of story.",
]

BENIGN = [
    "the new map is a lot more fun than the old one",
    "does anyone know when the servers come back up",
    "great write up, thanks for sharing the sources",
    "my team finally won a match after ten losses in a row",
    "the city council should fix the potholes on main street before winter",
    "i think the price increase is fair given the new features",
    "the ending of the movie surprised me in a good way",
    "can someone explain how the ranking system works",
    "this recipe worked perfectly, i added a bit more garlic",
    "the bus was late again but the driver was really friendly",
    "congrats to the devs, the patch fixed my crash",
    "i disagree with the reviewer but i see where they are coming from",
    "the library extended its weekend hours which is great for students",
    "anyone else excited for the tournament next week",
    "please add a colorblind mode, it would help a lot of players",
    "the referee made a tough call but it was probably right",
    "my grandmother loved this article, she grew up in that town",
    "i switched to the night shift and the commute is so much better",
    "the graphics look amazing on the new console",
    "thank you for the detailed explanation, it cleared things up",
    "we should plant more trees along the river trail",
    "the matchmaking feels faster since yesterday",
    "good point about the budget, i had not considered that",
    "the support team answered my ticket in an hour",
    "is there a guide for beginners somewhere",
    "the stream was chill tonight, thanks everyone for hanging out",
    "i love how the community helps new players",
    "the weather ruined our picnic but we had fun anyway",
    "that goal in the last minute was incredible",
    "the mayor's plan has some good ideas and some weak ones",
    "i read the whole report and the numbers look solid",
    "can we get more servers in south america please",
    "the soundtrack in this game is so underrated",
    "this is the most helpful thread on the forum",
    "voting starts at eight so go early to avoid the line",
    "my cat sat on the keyboard and queued me for ranked",
    "the bridge repairs should finish by march according to the city",
    "the author clearly did a lot of research for this piece",
    "new player here, any tips for the first boss",
    "the update notes are way clearer than last time",
    "the school board meeting is open to the public on thursday",
    "i appreciate that the mods keep this place civil",
    "nice clutch in the final round, well played",
    "the farmers market has fresh strawberries this week",
    "i miss the old menu music",
    "good luck to everyone in the finals",
    "the hospital expansion will create a lot of local jobs",
    "the trade seems fair for both teams",
    "i had the same bug, restarting the client fixed it",
    "happy birthday to the best guild leader ever",
    "the park cleanup on saturday needs more volunteers",
    "interesting take, i would like to see more data on it",
    "the new bike lanes made my commute safer",
    "this comment section is surprisingly wholesome today",
    "the patch nerfed my main but it was probably needed",
    "lovely photos of the coast, where was this taken",
    "our team needs a healer for tonight's raid",
    "the court ruling was expected by most legal experts",
    "what settings do you use for the best frame rate",
    "the museum is free on the first sunday of the month",
]

CRITICAL = [
    "this article is one sided and ignores half the facts",
    "the devs clearly do not play their own game",
    "worst patch in years, the balance is completely off",
    "the council wasted our money on that useless statue",
    "this take is lazy and poorly researched",
    "the moderators here are way too strict",
    "i am so tired of the same boring events every month",
    "the referee was terrible and cost us the game",
    "that policy is a disaster and everyone knows it",
    "this company only cares about money, not players",
    "your argument makes no sense at all",
    "the reporter got basically every detail wrong",
    "stop whining about the nerf and adapt",
    "the matchmaking is garbage and nobody at the studio cares",
    "this is the dumbest rule the league has ever made",
    "the senator's speech was full of empty promises",
    "this game used to be good before the greedy updates",
    "i cannot believe people actually defend this decision",
    "the customer service is a joke",
    "you clearly did not read the article",
    "the new ui is ugly and confusing",
    "the city keeps raising taxes and nothing improves",
    "calling this a fix is an insult to the players",
    "that was the most boring final i have ever watched",
    "people who camp in ranked ruin the game for everyone",
    "the writing in this season is lazy and predictable",
    "the coach should be fired after that performance",
    "this forum has become a complaint factory",
]

INSULT = [
    "you are an idiot and everyone here knows it",
    "what a clown, go back to the tutorial",
    "are you really this stupid or just pretending",
    "nobody cares about your opinion, loser",
    "you play like a brain dead potato",
    "shut up already, you absolute moron",
    "only a complete fool would write something this dumb",
    "you are pathetic and so is your team",
    "go cry somewhere else, crybaby",
    "your mom must be so proud of her little troll",
    "this writer is a clueless hack",
    "you have the iq of a rock",
    "what an ignorant thing to say, you dimwit",
    "uninstall the game, you worthless noob",
    "the mayor is a spineless coward",
    "you are a joke and a waste of oxygen",
    "look at this genius, thinks he knows everything, what a tool",
    "get lost, nobody wants you in this thread, freak",
    "you are the dumbest person on this forum",
    "imagine being this braindead",
    "the commenter above is a total imbecile",
    "you sound like a whiny little brat",
    "keep typing, idiot, you just make yourself look worse",
    "what a loser, still crying about a video game",
    "you are too stupid to understand basic math",
    "this reporter is a lying fool",
    "go back under your bridge, troll",
    "your brain must be the size of a pea",
    "nobody asked, you annoying clown",
    "you are a disgrace to this community",
    "typical moron take from a typical moron",
    "the ref is blind and dumb as a post",
    "you are such a pathetic excuse for a player",
    "sit down, dummy, the adults are talking",
]

OBSCENE = [
    "this patch is complete crap",
    "what the hell were the devs thinking",
    "damn, that was a bs call by the ref",
    "this is such a pile of sh*t",
    "i am so pissed off at this stupid update",
    "wtf is wrong with the servers again",
    "holy crap the lag is unbearable",
    "what a load of bull crap",
    "the f***ing game crashed again",
    "screw this company and their damn prices",
    "this damn queue takes forever",
    "hell no, i am not paying for that crap",
    "that article is total bs from start to finish",
    "the freaking servers are down again, what the hell",
    "this is sh*tty design and they know it",
    "crappy matchmaking, crappy rewards, crappy game",
    "son of a b*tch, lost again on the last round",
    "kiss my ass, i am done with this game",
    "this is bullsh*t and you know it",
    "they can shove their battle pass up their ass",
    "pissed me off so bad i broke my controller",
    "the whole council can go to hell",
]

INSULT_OBSCENE = [
    "you are a f***ing idiot",
    "shut your damn mouth, moron",
    "what a dumb ass comment",
    "go to hell, you pathetic loser",
    "you stupid piece of crap",
    "get the hell out of here, clown",
    "you are full of sh*t and everyone knows it",
    "this author is a complete dumbass",
    "screw you and your garbage opinion, idiot",
    "you useless sack of crap",
    "shut the f*** up, noob",
    "what a jackass, seriously",
]

THREAT = [
    "i will find out where you live",
    "watch your back when you log in tomorrow",
    "someone should slap you for saying that",
    "say that again and see what happens to you",
    "people like you deserve to get punched",
    "i am going to make you regret this",
    "keep talking and you will get hurt",
    "i hope someone runs you over",
    "you better hide, i know your username and your town",
    "if i see you at the stadium you are done",
    "i would smash your face if you said that to me",
    "the mayor should be dragged out of office by force",
    "come say that to my face and see how it ends",
    "one day someone is going to shut you up for good",
    "meet me outside and we will settle this",
    "you will not be laughing when i find you",
    "i swear i will break your legs",
    "someone should burn his house down",
]

THREAT_SEVERE = [
    "i will hunt you down and kill you, idiot",
    "i hope you die in a fire, you worthless piece of sh*t",
    "go kill yourself, nobody would miss you",
    "i am going to beat you to death, moron",
    "someone should shoot that f***ing clown",
]

IDENTITY = [
    "people from that country are all thieves",
    "women should not be allowed to play ranked",
    "go back to where you came from",
    "typical immigrant, always complaining",
    "all religious people are brainwashed sheep",
    "of course a girl wrote this article",
    "old people should not be allowed to vote",
    "those people do not belong in our neighborhood",
    "gay players ruin every team they join",
    "muslims are all the same, do not trust them",
    "christians are a bunch of hypocrites",
    "never hire a foreigner, they are lazy",
    "this is why women should stay out of gaming",
    "black people always cause trouble at these games",
    "refugees are ruining this city",
    "that accent tells me everything about how dumb you are",
    "jews control all the media, wake up",
    "trans people are just confused, stop pretending",
    "white people cannot dance and should not try",
    "asians all cheat at these games",
]

IDENTITY_SEVERE = [
    "all immigrants are filthy animals and should be thrown out",
    "women are stupid and worthless, period",
    "those people are vermin and deserve what they get",
    "gays are disgusting freaks",
]

SEXUAL = [
    "send nudes or get off the stream",
    "she only got promoted because she sleeps with the boss",
    "nice body, want to hook up after the match",
    "that streamer is just selling sex, not gameplay",
    "talk dirty to me in voice chat",
    "i bet she is great in bed",
    "show us more skin and you will get more viewers",
    "he spends all night watching porn instead of practicing",
    "the outfit is basically lingerie, very sexy",
    "come to my room and i will show you something big",
    "the ad was full of half naked models",
    "she is only famous for her boobs",
    "this game is just an excuse for horny teenagers",
    "i would do things to her you cannot say on this forum",
    "the cosplay was so hot i could not stop staring at her chest",
    "dm me for my onlyfans",
]

SEXUAL_OBSCENE = [
    "she looks like a total slut in that picture",
    "what a sexy little b*tch",
    "shut up and take your clothes off",
    "f*** me that outfit is hot",
]

# name -> (sentences, per-label probability that an annotator marks it)
CATEGORIES: dict[str, tuple[list[str], dict[str, float]]] = {
    "benign": (BENIGN, {"toxicity": 0.03}),
    "critical": (CRITICAL, {"toxicity": 0.3, "insult": 0.12}),
    "insult": (INSULT, {"toxicity": 0.85, "insult": 0.85, "severe_toxicity": 0.05}),
    "obscene": (OBSCENE, {"toxicity": 0.7, "obscene": 0.8}),
    "insult_obscene": (INSULT_OBSCENE, {"toxicity": 0.95, "insult": 0.9, "obscene": 0.85, "severe_toxicity": 0.35}),
    "threat": (THREAT, {"toxicity": 0.85, "threat": 0.85, "severe_toxicity": 0.15}),
    "threat_severe": (
        THREAT_SEVERE,
        {"toxicity": 0.98, "threat": 0.9, "severe_toxicity": 0.75, "insult": 0.6, "obscene": 0.4},
    ),
    "identity": (IDENTITY, {"toxicity": 0.85, "identity_attack": 0.85, "insult": 0.3}),
    "identity_severe": (
        IDENTITY_SEVERE,
        {"toxicity": 0.98, "identity_attack": 0.95, "severe_toxicity": 0.65, "insult": 0.7},
    ),
    "sexual": (SEXUAL, {"toxicity": 0.65, "sexual_explicit": 0.8, "obscene": 0.25}),
    "sexual_obscene": (
        SEXUAL_OBSCENE,
        {"toxicity": 0.9, "sexual_explicit": 0.85, "obscene": 0.8, "insult": 0.5, "severe_toxicity": 0.2},
    ),
}
COPIES = {"benign": 4, "critical": 4}  # comments per core sentence; others get 3
LEET = {"i": "1", "o": "0", "a": "@", "e": "3", "s": "$"}


def misspell(word: str, rng: random.Random) -> str:
    """One typo of the kinds seen online: drop, double, swap, stretch, or leetspeak."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(["drop", "double", "swap", "stretch", "leet"])
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "stretch":
        return word[:i] + word[i] * rng.randint(3, 5) + word[i + 1 :]
    return "".join(LEET.get(c, c) if rng.random() < 0.5 else c for c in word)


def compose(core: str, rng: random.Random) -> str:
    words = core.split()
    if rng.random() < 0.35:
        words = [misspell(w, rng) if rng.random() < 0.25 else w for w in words]
    text = " ".join(words)
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text = text.upper() if rng.random() < 0.15 else text + rng.choice([".", "!", "!!", "?!", "..."])
    lead = rng.choice(LEADS) + " " if rng.random() < 0.35 else ""
    return (lead + text + " " + rng.choice(TAILS)).strip()


def annotate(probabilities: dict[str, float], rng: random.Random) -> dict[str, float]:
    """Fraction of annotators voting yes, each item's probability jittered as raters disagree."""
    labels = {}
    for label in LABELS:
        p = probabilities.get(label, 0.01)
        p = min(max(p + rng.gauss(0, 0.12), 0.0), 1.0)
        labels[label] = sum(rng.random() < p for _ in range(ANNOTATORS)) / ANNOTATORS
    return labels


def main() -> None:
    rng = random.Random(20221128)
    rows = []
    for name, (cores, probabilities) in CATEGORIES.items():
        shuffled = cores[:]
        rng.shuffle(shuffled)
        held_out = set(shuffled[: max(1, round(len(cores) * 0.25))])
        for core in cores:
            for _ in range(COPIES.get(name, 3)):
                split = "test" if core in held_out else "train"
                rows.append({"comment_text": compose(core, rng), **annotate(probabilities, rng), "split": split})
    rng.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "comment_text", *LABELS, "split"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"id": i, **row})
    print(f"wrote {len(rows)} comments to {OUT}")


if __name__ == "__main__":
    main()
