"""A synthetic WebShop catalogue in WebShop's exact file schema, so the env runs offline.

Writes `items_shuffle_{n}.json` (scraped-product records) and `items_ins_v2_{n}.json` (attributes, and an
instruction for most products) into --out, deterministically from --seed:

  python -m opid_jax.envs.webshop.catalogue --out=DIR --n=300 --seed=0
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import string
import zlib

# Product types: query | title noun | product category path | price range in dollars.
PRODUCT_TYPES = {
  "beauty": """
    Face wash | Foaming Face Wash | Beauty & Personal Care › Skin Care › Face › Cleansers | 6-40
    Hair extensions | Clip In Hair Extensions | Beauty & Personal Care › Hair Care › Hair Extensions | 15-120
    Lipstick | Matte Lipstick | Beauty & Personal Care › Makeup › Lips › Lipstick | 5-35
    Nail polish | Gel Nail Polish | Beauty & Personal Care › Foot, Hand & Nail Care › Nail Polish | 4-25
    Shampoo | Moisturizing Shampoo | Beauty & Personal Care › Hair Care › Shampoos | 6-45
    Body lotion | Body Lotion | Beauty & Personal Care › Skin Care › Body › Lotions | 5-40
    Makeup brushes | Makeup Brush Set | Beauty & Personal Care › Tools & Accessories › Makeup Brushes | 8-60
    Eye shadow | Eyeshadow Palette | Beauty & Personal Care › Makeup › Eyes › Eyeshadow | 6-55
    Perfume | Eau de Parfum Spray | Beauty & Personal Care › Fragrance › Women's › Eau de Parfum | 20-150
    Refillable containers | Refillable Travel Bottles | Beauty & Personal Care › Tools & Accessories › Bags | 5-30
  """,
  "electronics": """
    Headphones | Wireless Headphones | Electronics › Headphones, Earbuds & Accessories › Headphones | 20-300
    Usb microphone | USB Condenser Microphone | Electronics › Computers & Accessories › Microphones | 25-180
    Phone case | Shockproof Phone Case | Cell Phones & Accessories › Cases, Holsters & Sleeves › Basic Cases | 7-35
    HDMI cables | HDMI Cable | Electronics › Television & Video › Accessories › HDMI Cables | 6-30
    Portable chargers | Portable Power Bank | Cell Phones & Accessories › Chargers & Power Adapters | 15-80
    Bluetooth speakers | Portable Speaker | Electronics › Portable Audio & Video › Portable Speakers | 20-250
    Tablet stand | Adjustable Tablet Stand | Electronics › Computers & Accessories › Tablet Accessories | 10-60
    Security cameras | Security Camera | Electronics › Camera & Photo › Video Surveillance | 25-200
    Screen protectors | Tempered Glass Screen Protector | Cell Phones & Accessories › Screen Protectors | 5-20
    Keyboards | Mechanical Gaming Keyboard | Electronics › Computers & Accessories › Keyboards | 20-180
  """,
  "fashion": """
    Women's pumps | Pointed Toe Pumps | Clothing, Shoes & Jewelry › Women › Shoes › Pumps | 25-140
    Men's t-shirts | Crew Neck Tee Shirt | Clothing, Shoes & Jewelry › Men › Clothing › T-Shirts | 8-40
    Yoga pants | Yoga Leggings | Clothing, Shoes & Jewelry › Women › Clothing › Leggings | 12-60
    Running shoes | Running Sneakers | Clothing, Shoes & Jewelry › Men › Shoes › Athletic | 30-160
    Hoodies | Pullover Hoodie Sweatshirt | Clothing, Shoes & Jewelry › Men › Clothing › Hoodies | 18-70
    Dresses | Summer Maxi Dress | Clothing, Shoes & Jewelry › Women › Clothing › Dresses | 15-90
    Socks | Cotton Crew Socks | Clothing, Shoes & Jewelry › Men › Clothing › Socks | 6-30
    Baseball caps | Baseball Cap | Clothing, Shoes & Jewelry › Men › Accessories › Hats & Caps | 7-35
    Sandals | Flat Sandals | Clothing, Shoes & Jewelry › Women › Shoes › Sandals | 12-70
    Jeans | Denim Jeans | Clothing, Shoes & Jewelry › Men › Clothing › Jeans | 20-90
  """,
  "garden": """
    Console tables | Console Table | Home & Kitchen › Furniture › Living Room Furniture › Tables | 60-1200
    Living room sets | Blackout Curtain Panels | Home & Kitchen › Home Décor Products › Window Treatments | 12-80
    Throw pillows | Throw Pillow Covers | Home & Kitchen › Bedding › Decorative Pillows, Inserts & Covers | 8-40
    Bath towels | Cotton Bath Towel Set | Home & Kitchen › Bath › Towels › Bath Towels | 15-70
    Bed sheets | Microfiber Sheet Set | Home & Kitchen › Bedding › Sheets & Pillowcases | 18-90
    Wall clocks | Silent Wall Clock | Home & Kitchen › Home Décor Products › Clocks › Wall Clocks | 12-80
    Area rugs | Shag Area Rug | Home & Kitchen › Home Décor Products › Area Rugs, Runners & Pads | 30-400
    Storage baskets | Woven Storage Basket | Home & Kitchen › Storage & Organization › Baskets & Bins | 10-50
    Desk lamps | LED Desk Lamp | Tools & Home Improvement › Lighting & Ceiling Fans › Lamps & Shades | 15-90
    Dining chairs | Upholstered Dining Chair | Home & Kitchen › Furniture › Kitchen & Dining Room Furniture | 50-600
  """,
  "grocery": """
    Beverages | Herbal Tea Sampler | Grocery & Gourmet Food › Beverages › Coffee, Tea & Cocoa › Tea | 6-40
    Coffee | Ground Coffee | Grocery & Gourmet Food › Beverages › Coffee, Tea & Cocoa › Coffee | 8-45
    Snack bars | Protein Snack Bars | Grocery & Gourmet Food › Snacks & Sweets › Snack Food Bars | 10-50
    Chocolate | Chocolate Bar | Grocery & Gourmet Food › Snacks & Sweets › Chocolate | 4-35
    Jerky | Beef Jerky | Grocery & Gourmet Food › Meat & Seafood › Jerky & Dried Meats | 8-45
    Olive oil | Extra Virgin Olive Oil | Grocery & Gourmet Food › Pantry Staples › Cooking & Baking › Oils | 9-60
    Nuts | Roasted Mixed Nuts | Grocery & Gourmet Food › Snacks & Sweets › Nuts & Seeds | 7-40
    Cookies | Butter Cookies Tin | Grocery & Gourmet Food › Snacks & Sweets › Cookies | 5-30
    Spices | Seasoning Blend | Grocery & Gourmet Food › Pantry Staples › Herbs, Spices & Seasonings | 4-25
    Candy | Gummy Candy | Grocery & Gourmet Food › Snacks & Sweets › Candy & Chocolate | 3-30
  """,
}
ATTRIBUTES = {
  "beauty": [
    "paraben free",
    "sulfate free",
    "cruelty free",
    "long lasting",
    "sensitive skin",
    "natural ingredients",
    "tea tree",
    "dry skin",
    "easy carry",
    "leak proof",
    "high quality",
    "fine lines",
    "hyaluronic acid",
    "argan oil",
    "travel size",
    "easy apply",
  ],
  "electronics": [
    "noise cancelling",
    "fast charging",
    "high definition",
    "easy install",
    "usb port",
    "long battery life",
    "water resistant",
    "wireless bluetooth",
    "plug play",
    "heavy duty",
    "high speed",
    "hands free",
    "easy use",
    "light weight",
  ],
  "fashion": [
    "machine wash",
    "long sleeve",
    "short sleeve",
    "rubber sole",
    "slim fit",
    "button closure",
    "elastic waistband",
    "arch support",
    "quick drying",
    "moisture wicking",
    "polyester spandex",
    "cotton spandex",
    "relaxed fit",
    "high waist",
    "non slip",
  ],
  "garden": [
    "machine washable",
    "living room",
    "solid wood",
    "easy clean",
    "easy assemble",
    "dining room",
    "bedroom",
    "space saving",
    "wood frame",
    "stainless steel",
    "super soft",
    "eco friendly",
    "high density",
    "mid century",
  ],
  "grocery": [
    "gluten free",
    "non gmo",
    "sugar free",
    "low carb",
    "keto friendly",
    "usda organic",
    "natural ingredients",
    "high protein",
    "dairy free",
    "individually wrapped",
    "plant based",
    "caffeine free",
    "low calorie",
    "ready eat",
  ],
}
OPTION_KINDS = {
  "beauty": ["color", "size"],
  "electronics": ["color", "style"],
  "fashion": ["color", "size"],
  "garden": ["color", "size"],
  "grocery": ["flavor name", "size"],
}


@functools.lru_cache(maxsize=None)
def _product_types(category: str) -> list[tuple[str, str, str, tuple[float, float]]]:
  types = []
  for line in PRODUCT_TYPES[category].strip().splitlines():
    query, noun, path, prices = (field.strip() for field in line.split("|"))
    low, high = prices.split("-")
    types.append((query, noun, path, (float(low), float(high))))
  return types


OPTION_VALUES = {
  "color": [
    "Black",
    "White",
    "Navy Blue",
    "Soft Grey",
    "Rose Gold",
    "Burgundy Red",
    "Light Pink",
    "Olive Green",
    "Beige",
    "Charcoal",
    "Black/White",
    "Multi 1",
    "Teal",
    "Ivory",
    "Coffee Brown",
    "Sky Blue",
  ],
  "style": ["Standard", "Pro", "Mini", "2 Pack", "3 ft", "6 ft", "10000mAh", "20000mAh"],
  "flavor name": [
    "Vanilla",
    "Dark Chocolate",
    "Sea Salt Caramel",
    "Original",
    "Peppermint",
    "Honey BBQ",
    "Green Tea",
    "Cinnamon",
  ],
}
SIZE_VALUES = {
  "beauty": ["3.4 Fl Oz (Pack of 1)", "6.7 Fl Oz (Pack of 2)", "1 Ounce", "Travel Size", "16 Inch", "20 Inch"],
  "fashion": ["Small", "Medium", "Large", "X-Large", "XX-Large", "6", "7.5", "8", "9 Wide", "10"],
  "garden": ["Twin", "Full", "Queen", "King", '52"W x 63"L', "5x7 ft", "2 Pack"],
  "grocery": ["12 Count (Pack of 1)", "4 Ounce (Pack of 6)", "1 Pound", "2.5 Pound Bag", "24 Count"],
}
BRAND_SYLLABLES = ["lu", "mo", "ra", "ven", "ka", "zi", "tor", "el", "no", "vi", "sa", "qu", "ion", "bel", "dor", "fi"]
DESCRIPTION_FILLERS = [
  "Designed for everyday use.",
  "Makes a thoughtful gift.",
  "Backed by a 30-day return policy.",
  "Carefully packed and shipped fast.",
  "Trusted by thousands of happy customers.",
]


def _asin(rng: random.Random, taken: set[str]) -> str:
  while True:
    asin = "B0" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
    if asin not in taken:
      taken.add(asin)
      return asin


def _brand(rng: random.Random) -> str:
  return "".join(rng.sample(BRAND_SYLLABLES, rng.randint(2, 3))).capitalize()


def _pricing(rng: random.Random, low: float, high: float) -> tuple[str, float]:
  price = round(rng.uniform(low, high), 2)
  draw = rng.random()
  if draw < 0.04:
    return "", 100.0
  if draw < 0.12:
    return f"${price:.2f} to ${round(price * rng.uniform(1.2, 2.0), 2):.2f}", price
  return f"${price:.2f}", price


def _options(rng: random.Random, category: str, kinds: list[str], price: float, price_text: str):
  """WebShop's customization_options: {Name: [{value, price, ...}] or None}, or '' when there are none."""
  draw = rng.random()
  if draw < 0.15:
    return ""
  names = kinds if draw > 0.5 else kinds[:1]
  options = {}
  for name in names:
    pool = SIZE_VALUES[category] if name == "size" else OPTION_VALUES[name]
    values = rng.sample(pool, rng.randint(2, 4))
    options[name.title()] = [
      {
        "is_selected": i == 0,
        "url": None if i == 0 else f"https://www.example.com/dp/{i}",
        "value": value,
        "price_string": price_text.split(" to ")[0] or "$100.0",
        "price": price,
        "image": f"https://images.example.com/{zlib.crc32(value.encode()):08x}.jpg",
      }
      for i, value in enumerate(values)
    ]
  if rng.random() < 0.1:
    options["Pattern Name"] = None  # real records carry empty option groups; WebShop skips them
  return options


def _instruction(rng: random.Random, query: str, attributes: list[str]) -> tuple[str, list[str]]:
  chosen = rng.sample(attributes, min(len(attributes), rng.randint(1, 3)))
  if len(chosen) == 1:
    return f"Find me {chosen[0]} {query.lower()}", chosen
  return f"Find me {', '.join(chosen[:-1])} {query.lower()} with {chosen[-1]}", chosen


def make_product(rng: random.Random, taken_asins: set[str], with_instruction: float):
  category = rng.choice(sorted(PRODUCT_TYPES))
  query, noun, product_category, (low, high) = rng.choice(_product_types(category))
  attribute_pool, option_kinds = ATTRIBUTES[category], OPTION_KINDS[category]
  asin, brand = _asin(rng, taken_asins), _brand(rng)
  attributes = rng.sample(attribute_pool, rng.randint(2, 5))
  annotation = {"attributes": attributes}
  if rng.random() < with_instruction:
    instruction, instruction_attributes = _instruction(rng, query, attributes)
    annotation.update(instruction=instruction, instruction_attributes=instruction_attributes)
    # The asked-for attributes lead the title, as a seller would put them.
    attributes[:] = instruction_attributes + [a for a in attributes if a not in instruction_attributes]
  title_attrs = " ".join(a.title() for a in attributes[:2])
  name = f"{brand} {title_attrs} {noun}"
  if len(attributes) > 2:
    name += f" with {attributes[2].title()}"
  description = (
    f"{brand} {noun.lower()} that is {', '.join(attributes)}. "
    f"{rng.choice(DESCRIPTION_FILLERS)} {rng.choice(DESCRIPTION_FILLERS)}"
  )
  bullets = [f"{a.upper()}: this {noun.lower()} is {a}." for a in attributes[1:]] + [rng.choice(DESCRIPTION_FILLERS)]
  pricing, price = _pricing(rng, low, high)
  rating = round(rng.uniform(2.5, 5.0), 1)
  raw = {
    "name": name,
    "product_information": {"ASIN": asin, "Date First Available": "January 1, 2021"},
    "brand": f"Brand: {brand}",
    "brand_url": f"https://www.example.com/s?k={brand}",
    "full_description": description,
    "pricing": pricing,
    "list_price": "",
    "availability_quantity": rng.randint(1, 20),
    "availability_status": "In Stock.",
    "images": [f"https://images.example.com/{asin}.jpg"],
    "product_category": product_category,
    "average_rating": rating,
    "small_description": bullets,
    "total_reviews": rng.randint(0, 500),
    "total_answered_questions": "",
    "customization_options": _options(rng, category, option_kinds, price, pricing),
    "seller_id": f"A{asin[2:]}",
    "seller_name": f"{brand} Store",
    "fulfilled_by_amazon": "",
    "fast_track_message": "",
    "aplus_present": "",
    "asin": asin,
    "category": category,
    "query": query,
    "page": rng.randint(1, 400),
    "small_description_old": "About this item " + " ".join(bullets),
  }
  return raw, annotation


def generate(n: int, seed: int = 0, with_instruction: float = 0.75):
  """(products list, {asin: attribute record}) in WebShop's schema."""
  rng, taken = random.Random(seed), set()
  products, attributes = [], {}
  for _ in range(n):
    raw, annotation = make_product(rng, taken, with_instruction)
    products.append(raw)
    attributes[raw["asin"]] = annotation
  return products, attributes


def write_catalogue(out_dir: str, n: int = 300, seed: int = 0, with_instruction: float = 0.75) -> tuple[str, str]:
  products, attributes = generate(n, seed, with_instruction)
  os.makedirs(out_dir, exist_ok=True)
  products_path = os.path.join(out_dir, f"items_shuffle_{n}.json")
  attributes_path = os.path.join(out_dir, f"items_ins_v2_{n}.json")
  with open(products_path, "w") as f:
    json.dump(products, f)
  with open(attributes_path, "w") as f:
    json.dump(attributes, f)
  return products_path, attributes_path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="folder to write the two JSON files into")
  parser.add_argument("--n", type=int, default=300, help="number of products")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--with_instruction", type=float, default=0.75, help="share of products with an instruction")
  args = parser.parse_args(argv)
  for path in write_catalogue(args.out, args.n, args.seed, args.with_instruction):
    print(path)


if __name__ == "__main__":
  main()
