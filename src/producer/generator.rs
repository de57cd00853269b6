//! Synthetic swaps: a token universe with random-walk USD prices, realistic
//! amounts, and each swap's lifecycle (`pending`, then `confirmed` or
//! `failed`). Pure and seeded, so a stream can be reproduced.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::domain::swap::Address;
use crate::domain::{Amount, Status, SwapEvent, SwapId, TokenSymbol, TxHash};

/// Seconds per block of the simulated chain.
const BLOCK_SECONDS: i64 = 12;
/// Smallest and largest USD value of a swap; values are log-uniform between.
const MIN_USD: f64 = 10.0;
const MAX_USD: f64 = 50_000.0;

struct Market {
    symbol: TokenSymbol,
    price_usd: f64,
    /// Largest relative price move per swap.
    step: f64,
}

/// The two events of one swap's lifecycle.
#[derive(Debug, Clone)]
pub struct SwapPlan {
    pub pending: SwapEvent,
    pub terminal: SwapEvent,
}

pub struct Generator {
    rng: SmallRng,
    markets: Vec<Market>,
    failed_share: f64,
}

impl Generator {
    pub fn new(tokens: &[TokenSymbol], failed_share: f64, seed: u64) -> Generator {
        assert!(tokens.len() >= 2, "a swap needs two tokens");
        let mut rng = SmallRng::seed_from_u64(seed);
        let markets = tokens
            .iter()
            .map(|symbol| {
                let (price_usd, step) = match starting_price(symbol.as_str()) {
                    Some(price) if is_stablecoin(symbol.as_str()) => (price, 0.0002),
                    Some(price) => (price, 0.002),
                    None => (10f64.powf(rng.gen_range(-2.0..2.0)), 0.004),
                };
                Market { symbol: symbol.clone(), price_usd, step }
            })
            .collect();
        Generator { rng, markets, failed_share }
    }

    /// The next swap, created at `now`, terminal `confirm_delay` later.
    pub fn next_swap(&mut self, now: DateTime<Utc>, confirm_delay: Duration) -> SwapPlan {
        let from = self.rng.gen_range(0..self.markets.len());
        let to = (from + self.rng.gen_range(1..self.markets.len())) % self.markets.len();
        for index in [from, to] {
            let market = &mut self.markets[index];
            market.price_usd *= 1.0 + self.rng.gen_range(-market.step..market.step);
        }
        let usd = (MIN_USD.ln() + self.rng.gen::<f64>() * (MAX_USD.ln() - MIN_USD.ln())).exp();
        // The seller receives a little less than they give: fees and slippage.
        let received_usd = usd * (1.0 - self.rng.gen_range(0.0..0.003));
        let amount_from = fixed(usd / self.markets[from].price_usd);
        let amount_to = fixed(received_usd / self.markets[to].price_usd);
        let usd_value = Amount::parse(&format!("{usd:.2}")).expect("formatted decimal");

        let pending = SwapEvent {
            id: SwapId { tx_hash: TxHash(self.rng.gen()), log_index: self.rng.gen_range(0..8) },
            block_number: None,
            timestamp: now,
            status: Status::Pending,
            maker: Some(Address(self.rng.gen())),
            token_from: self.markets[from].symbol.clone(),
            token_to: self.markets[to].symbol.clone(),
            amount_from,
            amount_to,
            usd_value,
        };
        let confirmed_at = now + chrono::Duration::from_std(confirm_delay).unwrap_or_default();
        let status = if self.rng.gen_bool(self.failed_share) { Status::Failed } else { Status::Confirmed };
        let terminal = SwapEvent {
            block_number: Some(block_at(confirmed_at)),
            timestamp: confirmed_at,
            status,
            ..pending.clone()
        };
        SwapPlan { pending, terminal }
    }

    /// A uniform random draw, for the producer's duplicate and reorder choices.
    pub fn chance(&mut self, share: f64) -> bool {
        share > 0.0 && self.rng.gen_bool(share.min(1.0))
    }

    /// A random duration up to `max`.
    pub fn delay_up_to(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return max;
        }
        Duration::from_micros(self.rng.gen_range(0..=max.as_micros().min(u64::MAX as u128) as u64))
    }
}

/// An amount with at most nine fractional digits and at least one unit.
fn fixed(value: f64) -> Amount {
    let amount = Amount::parse(&format!("{value:.9}")).unwrap_or(Amount::ZERO);
    amount.max(Amount::from_units(1))
}

fn block_at(time: DateTime<Utc>) -> u64 {
    // Block 21,000,000 at 2024-10-19, one block every 12 s.
    let genesis_offset = 1_729_300_000;
    21_000_000 + ((time.timestamp() - genesis_offset).max(0) / BLOCK_SECONDS) as u64
}

fn starting_price(symbol: &str) -> Option<f64> {
    Some(match symbol {
        "BTC" | "WBTC" => 97_000.0,
        "ETH" | "WETH" => 4_200.0,
        "SOL" => 240.0,
        "BNB" => 650.0,
        "TON" => 5.5,
        "USDC" | "USDT" | "DAI" => 1.0,
        _ => return None,
    })
}

fn is_stablecoin(symbol: &str) -> bool {
    matches!(symbol, "USDC" | "USDT" | "DAI")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<TokenSymbol> {
        ["ETH", "BTC", "USDC", "NEWCOIN"].iter().map(|s| TokenSymbol::parse(s).unwrap()).collect()
    }

    #[test]
    fn swaps_are_valid_and_their_lifecycle_is_consistent() {
        let mut generator = Generator::new(&tokens(), 0.5, 7);
        let now = Utc::now();
        let mut failed = 0;
        for _ in 0..1000 {
            let plan = generator.next_swap(now, Duration::from_secs(3));
            let (p, t) = (&plan.pending, &plan.terminal);
            assert_ne!(p.token_from, p.token_to);
            assert!(p.amount_from.is_positive() && p.amount_to.is_positive());
            assert!(p.usd_value >= Amount::parse("10").unwrap());
            assert_eq!(p.status, Status::Pending);
            assert!(t.status.is_terminal());
            assert_eq!(p.id, t.id);
            assert_eq!((t.timestamp - p.timestamp).num_seconds(), 3);
            assert!(t.block_number.is_some() && p.block_number.is_none());
            failed += usize::from(t.status == Status::Failed);
        }
        assert!((400..600).contains(&failed), "failed share off: {failed}");
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let now = Utc::now();
        let mut a = Generator::new(&tokens(), 0.1, 42);
        let mut b = Generator::new(&tokens(), 0.1, 42);
        for _ in 0..100 {
            assert_eq!(a.next_swap(now, Duration::ZERO).terminal, b.next_swap(now, Duration::ZERO).terminal);
        }
    }

    #[test]
    fn prices_stay_near_their_start() {
        let mut generator = Generator::new(&tokens(), 0.0, 1);
        let eth = TokenSymbol::parse("ETH").unwrap();
        let mut last = None;
        for _ in 0..500 {
            let swap = generator.next_swap(Utc::now(), Duration::ZERO).terminal;
            if let Some(c) = crate::domain::aggregate::Contribution::for_token(&swap, &eth) {
                last = Some(c.price.as_decimal());
            }
        }
        let price: f64 = last.unwrap().to_string().parse().unwrap();
        assert!((2_000.0..8_000.0).contains(&price), "ETH drifted to {price}");
    }
}
