"""CMCRModel: the 3D backbone, the frozen image side, the unified codebook and the decoders.

``forward(batch)`` returns the unweighted, active loss terms and a few float statistics;
``cmcr.losses.weighted_total`` applies the weights. Submodules that a method switch turns off
are not built.
"""

from __future__ import annotations

import time
import zlib
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmcr import losses as L
from cmcr.configs.schema import Config
from cmcr.data.collate import unit_float
from cmcr.errors import CheckpointError, CMCRError
from cmcr.losses.extra import TermInputs, active_extra_terms
from cmcr.losses.groups import LossGroups, loss_groups, rank_in_group
from cmcr.models.backbone import build_backbone, set_bn_momentum
from cmcr.models.codebook import UnifiedCodebook
from cmcr.models.decoders import (
    FrozenImageEncoder,
    GeometryScatter,
    ImageHead,
    MIMDecoder,
    OccupancyDecoder,
    mean_per_query,
)

BACKBONE_PARTS = ("backbone", "point_head_shared", "point_head_specific")


def active_terms(cfg: Config) -> dict[str, bool]:
    """Which components a config turns on (ppkt: nce only; random: nothing)."""
    me = cfg.method
    cmcr = me.name == "cmcr"
    return {
        "nce": me.name in ("cmcr", "ppkt"),
        "mim": cmcr and me.mim,
        "gemim": cmcr and me.mim and me.gemim,  # GEMIM feeds the MIM decoder
        "occupancy": cmcr and me.occupancy,
        "codebook": cmcr and me.codebook,
        "orth": cmcr and me.orth,
    }


class CMCRModel(nn.Module):
    """CMCR pre-training model (also PPKT, and the ablations, by config switches)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, d = cfg.model, cfg.model.feat_dim
        self.cfg, self.on = cfg, active_terms(cfg)
        self.backbone = build_backbone(m)
        # 1×1×1 sparse convs are per-voxel linear maps; both heads are always built so that
        # backbone.pt has the same keys for every variant
        self.point_head_shared = nn.Linear(self.backbone.out_dim, d)
        self.point_head_specific = nn.Linear(self.backbone.out_dim, d)
        if self.on["nce"]:
            self.image_encoder = FrozenImageEncoder(m.image_encoder, m.image_weights)
            c = self.image_encoder.out_dim
            up, corners = m.image_upsample, m.image_head_align_corners
            self.image_head_shared = ImageHead(c, d, up, normalise=True, align_corners=corners)
        if self.on["mim"]:
            self.image_head_specific = ImageHead(c, d, up, normalise=False, align_corners=corners)
            self.mim_decoder = MIMDecoder(d, m.mim_channels)
        if self.on["gemim"]:
            self.gemim = GeometryScatter(d)
        if self.on["occupancy"]:
            self.occ_decoder = OccupancyDecoder(d, m.occ_hidden, m.occ_last_relu)
        if self.on["codebook"]:
            self.codebook = UnifiedCodebook(
                m.codebook_size, d, m.codebook_decay, m.codebook_eps, m.codebook_init
            )
        # pre-training's momentum (release 0.05); the frozen encoder's BatchNorm stays in eval
        set_bn_momentum(self, m.bn_momentum, m.bn_momentum_scope)
        self.profile = False  # when True, forward records section times in self.timings
        self.timings: dict[str, float] = {}

    @contextmanager
    def _timed(self, name: str):
        t0 = time.perf_counter()
        yield
        if self.profile:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    # ---- the forward pass, in the order of METHOD.md --------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, dict]:
        """Batch (docs/architecture.md) -> {"losses": {term: scalar}, "stats": {name: float}}.

        Every built-in term is computed per loss group of ``loss.group_size`` scans and
        averaged over the groups (cmcr/losses/groups.py); registered extra terms see the
        whole batch.
        """
        if not self.on["nce"]:
            raise CMCRError("method.name=random: there is no pre-training forward pass")
        self.timings = {}
        out: dict[str, dict] = {"losses": {}, "stats": {}}
        groups = loss_groups(batch, self.cfg.loss.group_size)
        pts = self.point_features(batch)  # shared (N, D) unit norm, specific (N, D)
        img = self.image_features(batch)  # shared, specific: (I, D, H, W)
        sel, f_p, f_v, mg = self._matched(batch, pts, img, groups)  # (n, 4), (n, D), (n, D), (n,)
        with self._timed("losses"):
            out["losses"]["nce"] = L.nce(f_p, f_v, self.cfg.loss.temperature, mg, groups.count)
        out["stats"]["n_matches"] = float(len(sel))
        q_p, q_v = pts["shared"], img["shared"]
        if self.on["codebook"]:
            matched = (sel, f_p, f_v, mg)
            if self.cfg.loss.codebook_matches == "independent":  # the release draws again
                matched = self._matched(batch, pts, img, groups, salt="codebook")
            q_p, q_v = self._codebook_terms(pts["shared"], img["shared"], matched, groups, out)
        if self.on["mim"]:
            self._mim_terms(batch, pts, img, q_v, groups, out)
        if self.on["occupancy"]:
            self._occupancy_terms(batch, pts, q_p, groups, out)
        if self.on["orth"]:
            self._orth_term(pts, groups, out)
        self._extra_terms(batch, pts, img, sel, f_p, f_v, out)
        return out

    def point_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-point shared (L2-normalised) and specific features, gathered through ``inverse``.

        ``voxel_shared`` / ``voxel_specific``: the same before the point→voxel inverse (V, D).
        """
        with self._timed("backbone"):
            voxel = self.backbone(
                batch["coords"], batch["feats"], batch["spatial_shape"], batch["batch_size"]
            )  # (V, C)
        inv = batch["inverse"]
        v_shared = F.normalize(self.point_head_shared(voxel), dim=1)  # (V, D)
        needs_specific = self.on["occupancy"] or self.on["gemim"] or self.on["orth"]
        v_specific = self.point_head_specific(voxel) if needs_specific else None
        return {
            "shared": v_shared[inv],  # (N, D)
            "specific": v_specific[inv] if needs_specific else None,
            "voxel_shared": v_shared,
            "voxel_specific": v_specific,
        }

    def image_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-pixel shared (L2-normalised) and specific features at input resolution."""
        with self._timed("image_encoder"):
            fill = self.cfg.data.mask_fill  # black: image_input is already masked (data.mask_fill)
            feat = self.image_encoder(
                batch["image_input"], batch["image_mask"], fill
            )  # (I, C, h, w)
        shared = self.image_head_shared(feat)  # (I, D, H, W)
        specific = self.image_head_specific(feat) if self.on["mim"] else None
        return {"shared": shared, "specific": specific}

    def _matched(self, batch, pts, img, groups: LossGroups, salt: str = ""):
        """Sampled unmasked pairs (n, 4), their point and pixel features (n, D), their group."""
        picked, mg = self.sample_matches(batch, groups, salt)  # (n,), group of each match (n,)
        sel = batch["pairs"][picked]  # (n, 4)
        f_p = pts["shared"][sel[:, 0]]  # (n, D)
        f_v = img["shared"][sel[:, 1], :, sel[:, 2], sel[:, 3]]  # (n, D)
        return sel, f_p, f_v, mg

    def sample_matches(
        self, batch: dict[str, Any], groups: LossGroups | None = None, salt: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``loss.num_matches`` unmasked pairs PER loss group, chosen reproducibly.

        Returns pair indices (n,) ordered by group, and each one's group (n,). The generator is
        seeded from train.seed, the batch's sample tokens and the optional batch keys
        ``epoch``/``step``, so the same batch always yields the same matches. One random
        permutation, a stable sort by group and the rank within the group: no loop over groups
        (with one group this is exactly the first num_matches of the permutation). A ``salt``
        gives a second sample independent of the first (the codebook terms' own draw).
        """
        groups = groups or loss_groups(batch, self.cfg.loss.group_size)
        keys = "|".join(batch.get("sample_tokens", []))
        extra = f"{batch.get('epoch', 0)}:{batch.get('step', 0)}"
        seed = zlib.crc32(f"{self.cfg.train.seed}:{extra}:{keys}{salt}".encode())
        gen = torch.Generator().manual_seed(seed)
        candidates = (~batch["pair_masked"]).nonzero(as_tuple=True)[0]  # (P_unmasked,)
        shuffled = candidates[torch.randperm(len(candidates), generator=gen).to(candidates.device)]
        group = groups.point[batch["pairs"][shuffled, 0]]  # (P_unmasked,)
        group, by_group = torch.sort(group, stable=True)
        rank, _ = rank_in_group(group, groups.count)
        keep = rank < self.cfg.loss.num_matches
        return shuffled[by_group][keep], group[keep]

    def _extra_terms(self, batch, pts, img, sel, f_p, f_v, out) -> None:
        """Terms registered with ``@register_loss_term`` whose weight is > 0 (whole batch)."""
        terms = active_extra_terms(self.cfg)
        if not terms:
            return
        inputs = TermInputs(
            self.cfg, batch, pts["shared"], pts["specific"], img["shared"], sel, f_p, f_v
        )
        with self._timed("losses"):
            for name, fn in terms.items():
                out["losses"][name] = fn(inputs)

    # ---- component terms ---------------------------------------------------------------------
    def _codebook_terms(self, p_shared, v_shared, matched, groups: LossGroups, out):
        """Assign codes, add commit + cmcm, EMA-update; return straight-through quantised maps.

        commit, cmcm and the EMA update use the sampled unmasked matches ``matched`` = (pairs,
        f_p, f_v, group): a second sample drawn independently of nce's (the release's
        ``loss_codebook``, loss.codebook_matches) or nce's own; every point and pixel is
        quantised for the decoders.
        """
        sel, f_p, f_v, mg = matched
        cb = self.codebook
        codes = cb.codes.clone()  # the losses use this step's codes; the update is in place
        # nearest-code assignment is model work (it also feeds the decoders), timed on its own
        with self._timed("codebook_assign"):
            idx_all_p = cb.assign(p_shared)  # (N,)
            if self.on["mim"]:  # the MIM decoder needs every pixel quantised
                n_img, d, h, w = v_shared.shape
                v_flat = v_shared.permute(0, 2, 3, 1).reshape(-1, d)  # (I·H·W, D)
                idx_all_v = cb.assign(v_flat)
                idx_v = idx_all_v.view(n_img, h, w)[sel[:, 1], sel[:, 2], sel[:, 3]]
            else:
                idx_v = cb.assign(f_v)
            idx_p = idx_all_p[sel[:, 0]]
        with self._timed("losses"):
            e_p, e_v = codes[idx_p], codes[idx_v]  # (n, D)
            beta = self.cfg.loss.commit_beta
            out["losses"]["commit"] = L.commit(f_p, f_v, e_p, e_v, beta, mg, groups.count)
            out["losses"]["cmcm"] = L.cmcm(f_p, f_v, codes, mg, groups.count)
        out["stats"].update(cb.statistics(idx_p, idx_v))
        cb.update(f_p, f_v, idx_p, idx_v, groups.count)
        # quantise with the pre-update codes so the losses and the decoder inputs agree
        q_p = cb.quantise(p_shared, idx_all_p, codes)  # (N, D)
        q_v = v_shared
        if self.on["mim"]:
            q_v = cb.quantise(v_flat, idx_all_v, codes).view(n_img, h, w, d).permute(0, 3, 1, 2)
        return q_p, q_v

    def _mim_terms(self, batch, pts, img, q_v, groups: LossGroups, out) -> None:
        """Reconstruct the unmasked image from specific + quantised shared (+ GEMIM) features."""
        x = img["specific"] + q_v  # (I, D, H, W)
        if self.on["gemim"]:
            x = x + self.gemim(pts["specific"], batch["pairs"], tuple(x.shape))
        recon = self.mim_decoder(x)  # (I, 3, H, W)
        with self._timed("losses"):
            out["losses"]["mim"] = L.mim(
                recon,
                unit_float(batch["images"]),  # the batch's bytes as float, here on the device
                batch["image_mask"],
                self.cfg.loss.mim_on,
                groups.image,
                groups.count,
            )

    def _occupancy_terms(self, batch, pts, q_p, groups: LossGroups, out) -> None:
        """Occupancy (BCE) and intensity (L1) per (query, neighbour) pair or per query.

        ``loss.occ_reduce``: ``pairs`` averages over every pair (release), ``queries`` first
        averages each query's pairs so every query counts once.
        """
        logit, inten, q = self.occ_decoder(
            pts["specific"] + q_p, batch["points"], batch["queries"], batch["query_neighbours"]
        )  # (E,) each: one row per valid (query, neighbour) pair
        n_q = len(batch["queries"])
        has = torch.bincount(q, minlength=n_q) > 0  # (Q,) queries with a neighbour
        if self.cfg.loss.occ_reduce == "queries":
            mean, _ = mean_per_query(torch.stack([logit, inten], 1), q, n_q)  # (Q, 2)
            q = has.nonzero(as_tuple=True)[0]  # each query with a neighbour, once
            logit, inten = mean[q, 0], mean[q, 1]
        grp = groups.query[q]
        with self._timed("losses"):
            out["losses"]["occ"] = L.occ(logit, batch["query_occ"][q], grp, groups.count)
            out["losses"]["intensity"] = L.intensity(
                inten,
                batch["query_intensity"][q],
                batch["query_has_intensity"][q],
                grp,
                groups.count,
            )
        out["stats"]["occ_query_coverage"] = float(has.float().mean()) if n_q else 0.0

    def _orth_term(self, pts, groups: LossGroups, out) -> None:
        """orth over the backbone's voxel rows (release) or over points, per loss group."""
        if self.cfg.loss.orth_rows == "voxels":
            rows = pts["voxel_shared"], pts["voxel_specific"], groups.voxel
        else:
            rows = pts["shared"], pts["specific"], groups.point
        with self._timed("losses"):
            out["losses"]["orth"] = L.orth(*rows, groups.count)

    # ---- what downstream loads ---------------------------------------------------------------
    def backbone_state(self) -> dict[str, torch.Tensor]:
        """State dict of the backbone and the two 3D heads (what ``backbone.pt`` stores)."""
        sd = self.state_dict()
        return {k: v.detach().clone() for k, v in sd.items() if k.split(".")[0] in BACKBONE_PARTS}

    def load_backbone_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Load ``backbone_state()`` output; every key must match."""
        own = {k for k in self.state_dict() if k.split(".")[0] in BACKBONE_PARTS}
        missing, unexpected = own - set(sd), set(sd) - own
        if missing or unexpected:
            raise CheckpointError(
                f"backbone state: does not fit model.backbone={self.cfg.model.backbone} "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        self.load_state_dict(sd, strict=False)
