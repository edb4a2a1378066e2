// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Registry} from "../contracts/Registry.sol";
import {Channels} from "../contracts/Channels.sol";
import {Test} from "./Test.sol";
import {ChannelsHandler} from "./ChannelsHandler.sol";

/// @notice The money invariants of Registry and Channels under random sequences of
/// ChannelsHandler's actions (scripts/forge-test runs them; --long for 10,000+ runs each).
contract ChannelsInvariantTest is Test {
    /// What forge reads from targetSelectors() (forge-std's StdInvariant declares the same).
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    ChannelsHandler internal handler;
    Registry internal registry;
    Channels internal channels;

    function setUp() public {
        handler = new ChannelsHandler();
        (registry, channels) = handler.contracts();
    }

    // forge calls targetContracts() and targetSelectors() once after setUp to learn what to
    // fuzz; without them it would call every contract setUp deployed, Channels and Registry
    // included, with random arguments and senders.
    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    function targetSelectors() public view returns (FuzzSelector[] memory t) {
        bytes4[] memory s = new bytes4[](11);
        s[0] = ChannelsHandler.open.selector;
        s[1] = ChannelsHandler.topUp.selector;
        s[2] = ChannelsHandler.serve.selector;
        s[3] = ChannelsHandler.settle.selector;
        s[4] = ChannelsHandler.disputeHonest.selector;
        s[5] = ChannelsHandler.finalize.selector;
        s[6] = ChannelsHandler.thaw.selector;
        s[7] = ChannelsHandler.withdrawDeposit.selector;
        s[8] = ChannelsHandler.withdraw.selector;
        s[9] = ChannelsHandler.warp.selector;
        s[10] = ChannelsHandler.settleFraud.selector;
        t = new FuzzSelector[](1);
        t[0] = FuzzSelector(address(handler), s);
    }

    /// The handler's every path, in one scripted sequence, so that a handler that quietly
    /// returns early everywhere (and so checks nothing) fails here rather than passing the
    /// invariants.
    function test_theHandlerReachesEveryPath() public {
        handler.open(0, 0, 1 ether);
        handler.open(1, 1, 1 ether);
        handler.serve(0, 5, 1); // bound(5, 1, 6): six receipts
        handler.serve(0, 5, 2);
        handler.settle(0, 0); // the first receipt only
        handler.disputeHonest(0, 1); // each of the 7 disputes
        handler.warp(handler.WINDOW() - 1);
        handler.finalize(0);
        handler.topUp(1, 0.1 ether);
        for (uint256 kind = 0; kind < 3; kind++) {
            handler.serve(1, 5, 10 + kind);
            handler.settleFraud(1, kind, kind);
        }
        handler.thaw(0);
        handler.warp(handler.THAW() - 1);
        handler.settle(0, 0); // the final settlement: one receipt more
        handler.disputeHonest(0, 2);
        handler.warp(handler.WINDOW() - 1);
        handler.finalize(0);
        handler.settle(0, 0); // refused: the final settlement was made
        handler.withdrawDeposit(0);
        for (uint256 i = 0; i < handler.beneficiaryCount(); i++) {
            handler.withdraw(i);
        }

        assertEq(handler.honestDisputes(), 14, "honest disputes attempted");
        assertEq(handler.frauds(), 3, "frauds settled and disputed");
        assertEq(handler.fraudsOfKind(0), 1, "wrong splits proven");
        assertEq(handler.fraudsOfKind(1), 1, "receipts of another model in a run proven");
        assertEq(handler.fraudsOfKind(2), 1, "run sums proven");
        assertEq(handler.finalized(), 2, "settlements finalized");
        assertEq(handler.refusedAfterFinal(), 1, "settlements refused after the final one");
        assertEq(handler.withdrawnDeposits(), 1, "deposits withdrawn");
        invariant_theMoneyRules();
    }

    /// Every rule below, after every call of every run: one fuzzing campaign checks them
    /// all, where an invariant function each would make forge run seven campaigns (seven
    /// times the time for the same number of runs per rule).
    function invariant_theMoneyRules() public view {
        _channelsHoldsExactlyWhatItOwes();
        _registryHoldsTheBondsAndSlashesSplitInHalf();
        _noHonestSettlementIsDisputable();
        _aVoidedSettlementPaysNothing();
        _aPayerNeverLosesMoreThanItSigned();
        _creditsAreTheSplitOfFinalizedValue();
        _theThawRulesHold();
    }

    /// (1) Channels holds exactly what it owes: every channel's deposit not yet settled
    /// (zero once withdrawn), every credit not yet withdrawn, and the data entries not yet
    /// claimed (none here: the handler's runs distribute nothing, their data share goes to
    /// the pool). Slashed bonds pass through: the burned half leaves for address(0).
    function _channelsHoldsExactlyWhatItOwes() internal view {
        uint256 owed;
        for (uint256 i = 0; i < handler.channelCount(); i++) {
            Channels.Channel memory ch = channels.channel(handler.ids(i));
            owed += ch.deposit - ch.settled;
        }
        for (uint256 i = 0; i < handler.beneficiaryCount(); i++) {
            owed += channels.balanceOf(handler.beneficiary(i));
        }
        assertEq(address(channels).balance, owed, "(1) Channels' balance vs what it owes");
        assertEq(
            address(channels).balance,
            handler.channelsIn() - handler.channelsOut(),
            "(1) Channels' balance vs ghost in - out"
        );
    }

    /// (1') Registry holds exactly the bonds; what was slashed went half to disputers' credit
    /// and half to address(0).
    function _registryHoldsTheBondsAndSlashesSplitInHalf() internal view {
        uint256 bonds;
        for (uint256 i = 0; i < handler.providerCount(); i++) {
            bonds += registry.bondOf(handler.provider(i));
        }
        assertEq(address(registry).balance, bonds, "(1') Registry's balance vs the bonds");
        assertEq(bonds, handler.bondsIn() - handler.slashed(), "(1') bonds vs ghost bonded - slashed");
        assertEq(handler.rewards() + handler.burned(), handler.slashed(), "(1') rewards + burned vs slashed");
        assertEq(handler.rewards(), handler.slashed() / 2, "(1') rewards: half of what was slashed");
        assertEq(address(0).balance - handler.zeroBalanceAtStart(), handler.burned(), "(1') burned at address(0)");
    }

    /// (2) No honest settlement is ever disputable: every dispute of one, with evidence that
    /// binds to it, answered NotFraud. And every fraud was provable.
    function _noHonestSettlementIsDisputable() internal view {
        assertEq(handler.honestDisputed(), 0, "(2) disputes of honest settlements that succeeded");
        assertEq(handler.badEvidence(), 0, "(2) disputes of honest settlements refused other than NotFraud");
        assertEq(handler.fraudUndisputable(), 0, "(2) frauds whose dispute failed");
    }

    /// (3) A voided settlement pays nothing: the channel is as before and only the disputer
    /// is credited.
    function _aVoidedSettlementPaysNothing() internal view {
        assertEq(handler.voidPaid(), 0, "(3) voids that moved the channel or credited someone");
    }

    /// (4) A payer never loses more than its co-signed cumulative: nothing beyond it is
    /// settled, its deposit is what it put in, and its refund is the rest.
    function _aPayerNeverLosesMoreThanItSigned() internal view {
        for (uint256 i = 0; i < handler.channelCount(); i++) {
            bytes32 id = handler.ids(i);
            Channels.Channel memory ch = channels.channel(id);
            assertTrue(ch.settled <= handler.signed(id), "(4) settled beyond the co-signed cumulative");
            assertEq(ch.settled, handler.settledValue(id), "(4) settled vs the ghost's finalized cumulative");
            if (ch.closed) {
                assertEq(
                    handler.depositIn(id) - handler.refunded(id), ch.settled, "(4) a closed channel's cost to its payer"
                );
            } else {
                assertEq(ch.deposit, handler.depositIn(id), "(4) an open channel's deposit");
            }
        }
    }

    /// (5) Every beneficiary's credit is its registered split of the finalized value (plus
    /// its dispute rewards), less what it withdrew.
    function _creditsAreTheSplitOfFinalizedValue() internal view {
        for (uint256 i = 0; i < handler.beneficiaryCount(); i++) {
            address a = handler.beneficiary(i);
            assertEq(
                channels.balanceOf(a), handler.ghostCredit(a) - handler.ghostWithdrawn(a), "(5) a beneficiary's credit"
            );
        }
    }

    /// (6) The thaw's rules: after the thaw's end the provider settles once, and every action
    /// the rules allow succeeds (honest settlements, finalize after the window, the payer's
    /// withdrawal once the thaw is over and nothing is pending) and no other does.
    function _theThawRulesHold() internal view {
        assertEq(handler.settledPastFinal(), 0, "(6) settlements after the final one past the thaw");
        assertTrue(handler.unexpected() == 0, string.concat("(6) ", handler.lastUnexpected()));
    }
}
