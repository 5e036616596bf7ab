"""Run once, at commit 46054e8, before the matcher-contract change (it imports that commit's tests/test_engine.py): tiny BSSAN checkpoints
in the v1 payload format and their all-pairs matrices on fixed inputs."""
import sys

sys.path.insert(0, "tests")
import torch
from itm.training.checkpoint import model_payload
from test_engine import DIMS, make_data, tiny_model

from itm.data.vocab import Vocab
from itm.evaluation.engine import score_all_pairs

features, captions = make_data()
out = {}
for name, extra in [("bssan", []), ("bssan_sharp", ["model.match_input=true", "model.w2r_context=3", "model.dropout=0.1"])]:
    model, config = tiny_model(name, *extra)
    vocab = Vocab.build([[f"w{i}" for i in range(DIMS.vocab_size - 2)]], min_count=1)
    payload = model_payload(model, config, vocab, DIMS, {"backbone": "synthetic"})
    scores = torch.from_numpy(score_all_pairs(model, features, captions))
    out[name] = {"checkpoint": payload, "scores": scores}
torch.save({"features": {"regions": features.regions, "objects": features.objects},
            "captions": {"ids": captions.ids, "lengths": captions.lengths}, "models": out},
           "tests/data/bssan_v1_fixture.pt")
print({k: v["scores"].shape for k, v in out.items()}, len(vocab))
