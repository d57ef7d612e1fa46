"""Lightning pieces: the module holds the training step, the data module the windows; the Trainer loops."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from models.autoencoder import AutoencoderConfig, AutoencoderParams, ConvAutoencoder
from models.data import Split
from models.features import FeatureSpec
from models.forecaster import ForecasterConfig, QuantileForecaster, forecast_loss
from models.region import RegionPanel
from training.windows import ReferenceWindowDataset, WindowDataset


def weight_averaging(training: Any) -> list[pl.Callback]:
    """The Trainer callbacks for a config's training section's weight averaging: with `ema_decay`,
    Lightning's EMA callback, which validates the averaged weights and puts them in every checkpoint's
    state_dict (the raw weights ride along for resuming). Pass it last in the Trainer's callbacks, so
    callbacks that copy the weights at validation end still see the averaged ones."""
    if training.ema_decay is None:
        return []
    return [pl.callbacks.EMAWeightAveraging(decay=training.ema_decay)]


class _WindowModule(pl.LightningModule):
    """What both modules share: one step for training and validation (the subclass's `_loss`), and AdamW
    with a one-cycle schedule over the whole fit."""

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True, batch_size=len(batch[0]), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        steps = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=max(int(steps), 1),
                                                    pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ForecastModule(_WindowModule):
    """Trains a QuantileForecaster with the pinball loss (MSE for a point model).

    loss_units: "window" (default) scores every window in its own normalized units, so zones of 100 MW
    and of 20,000 MW weigh alike in a global model; "data" scores in the data's units, as RevIN models
    are trained on data already on one scale (ETTh1's z-scored channels, whose benchmark MSE is in those
    units: there, "window" overweights quiet windows and costs accuracy at long horizons).

    region_dropout: each training window hides each region zone's channel with this probability (as a
    gap in a neighbour's data shows at serving time): the model learns to do without any one neighbour,
    and leans less on neighbours that do not help a zone.
    """

    def __init__(self, model_config: dict[str, Any], lr: float = 1e-3, weight_decay: float = 1e-4,
                 loss_units: str = "window", region_dropout: float = 0.0) -> None:
        super().__init__()
        if loss_units not in ("window", "data"):
            raise ValueError(f"loss_units must be 'window' or 'data', got {loss_units!r}")
        self.save_hyperparameters()
        self.model = QuantileForecaster(ForecasterConfig.from_dict(model_config))

    @classmethod
    def for_model(cls, model: QuantileForecaster, training: Any) -> ForecastModule:
        """A module that trains `model` as a config's training section (training.config.TrainingSection) says."""
        module = cls(model.config.to_dict(), lr=training.lr, weight_decay=training.weight_decay,
                     loss_units=training.loss_units, region_dropout=training.region_dropout)
        module.model = model
        return module

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        history, past, future, target = batch
        pred, loc, scale = self.model.forward_normalized(history, past, future)
        if self.hparams.loss_units == "data":
            pred = pred.float() * scale.unsqueeze(-1) + loc.unsqueeze(-1)
            return forecast_loss(pred, target, self.model.config.quantiles)
        return forecast_loss(pred.float(), (target - loc) / scale, self.model.config.quantiles)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return super().training_step(self._hide_region_channels(batch), batch_idx)

    def _hide_region_channels(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        p = self.hparams.region_dropout
        n = self.model.config.n_past_covariates if p else 0
        if not n:
            return batch
        history, past, future, target = batch
        keep = (torch.rand(past.shape[0], 1, n, device=past.device) >= p).to(past.dtype)  # per window and zone
        return history, torch.cat([past[..., :-n], past[..., -n:] * keep], dim=-1), future, target


class AutoencoderModule(_WindowModule):
    """Trains a ConvAutoencoder to reconstruct normal weeks (Huber loss in reference-level units);
    optimizer and schedule as for the forecasters."""

    def __init__(self, model_config: dict[str, Any], lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ConvAutoencoder(AutoencoderConfig.from_dict(model_config))

    @classmethod
    def for_model(cls, model: ConvAutoencoder, training: Any) -> AutoencoderModule:
        """A module that trains `model` with a config's training section's optimizer settings."""
        module = cls(model.config.to_dict(), lr=training.lr, weight_decay=training.weight_decay)
        module.model = model
        return module

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.model.loss(*batch)


class WindowDataModule(pl.LightningDataModule):
    """Random training windows (a fresh draw of `samples_per_epoch` each epoch) and a fixed validation subset."""

    def __init__(self, split: Split, model_config: ForecasterConfig | AutoencoderConfig, features: FeatureSpec, *,
                 batch_size: int, samples_per_epoch: int, val_samples: int, seed: int = 0, mixup: float = 0.0) -> None:
        super().__init__()
        self.split, self.model_config, self.features = split, model_config, features
        self.batch_size, self.samples_per_epoch, self.val_samples, self.seed, self.mixup = (
            batch_size, samples_per_epoch, val_samples, seed, mixup)
        self.train_set: WindowDataset | ReferenceWindowDataset | None = None
        self.val_set: Subset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if isinstance(self.model_config, AutoencoderConfig):  # autoencoder: windows with their reference
            weeks = AutoencoderParams(**self.model_config.params).reference_weeks
            self.train_set, val = (ReferenceWindowDataset(part, self.model_config.input_length, weeks, self.features)
                                   for part in (self.split.train, self.split.val))
            need = f"{weeks} reference weeks + {self.model_config.input_length} h"
        else:
            length, horizon = self.model_config.input_length, self.model_config.horizon
            # region context from the periods each set may see: no validation values in training inputs
            zones = self.features.region_zones
            train_region = RegionPanel.from_series(self.split.train, zones) if zones else None
            val_region = RegionPanel.from_series([*self.split.train, *self.split.val], zones) if zones else None
            self.train_set = WindowDataset(self.split.train, length, horizon, self.features, region=train_region,
                                           mixup=self.mixup, seed=self.seed)
            val = WindowDataset(self.split.val, length, horizon, self.features, region=val_region)
            need = f"{length} h history + {horizon} h horizon"
        if len(self.train_set) == 0 or len(val) == 0:
            raise ValueError(
                f"not enough data for {need} windows: "
                f"{len(self.train_set)} training and {len(val)} validation windows"
            )
        pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(self.seed))[: self.val_samples]
        self.val_set = Subset(val, pick.sort().values.tolist())

    def train_dataloader(self) -> DataLoader:
        sampler = RandomSampler(self.train_set, replacement=len(self.train_set) < self.samples_per_epoch,
                                num_samples=self.samples_per_epoch)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size * 2)
