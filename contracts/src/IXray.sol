// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/**
 * @title IXray
 * @notice Interface of the xray contract: the ledger that anchors the fingerprints of
 * medical images received by xray-gateway.
 * @dev Modelled on the seed paper's `xray.sol`/`xr.sol`. Nothing in here carries
 * protected health information: patients and images are identified by 32-byte keys
 * (HMAC-SHA256 under a site secret that never leaves the hospital).
 */
interface IXray {
    /**
     * @notice The seed paper's `UserType`. `Doctor` keeps the value 1 used in the
     * seed's console session (`setPermission(doctor, 'Dr.Lee', 1, true)`).
     */
    enum UserType {
        None,
        Doctor,
        Hospital,
        Recorder,
        Auditor
    }

    /**
     * @notice Why an image was retired (a fixed set: free text could carry patient data).
     * `None` is never a valid reason.
     */
    enum RetireReason {
        None,
        Withdrawn,
        WrongPatient,
        Duplicate,
        Corrupt,
        Erased
    }

    /**
     * @notice What a batch anchors. Every batch, of either kind, takes the next id of the one
     * sequence {batchCount} counts and {batchOf} reads; {batchKindOf} tells them apart.
     * `Image`: images (leaf as in {BatchedLeaf}); `Access`: entries of the gateway's access
     * trail (who read which image, when, and the verdict served), whose leaves hold only
     * pseudonymous keys. An access batch never proves an image.
     */
    enum BatchKind {
        Image,
        Access
    }

    /// @notice One version of one image, as returned by {imageOf} and {versionOf}.
    struct ImageVersion {
        /// @notice SHA-256 of the dataset bytes as received, File Meta Information excluded.
        bytes32 digest;
        /// @notice SHA-256 of the Pixel Data value as received.
        bytes32 pixelDigest;
        /// @notice HMAC of the patient's issuer and ID; never the ID itself.
        bytes32 patientKey;
        /// @notice Account that recorded this version.
        address recorder;
        /// @notice Block timestamp of the recording.
        uint40 recordedAt;
        /// @notice Block number of the recording.
        uint40 blockNumber;
        /// @notice Examined body part, e.g. `CHEST` (DICOM BodyPartExamined).
        string bodyPart;
        /// @notice DICOM Modality, e.g. `DX`.
        string modality;
    }

    /// @notice An image: its current version plus its history and retirement.
    struct Image {
        /// @notice The newest version.
        ImageVersion current;
        /// @notice Number of versions; the first recording is version 1.
        uint32 versions;
        /// @notice True once retired with {retireImage}.
        bool retired;
        /// @notice Who retired it, zero if not retired.
        address retiredBy;
        /// @notice When it was retired, zero if not retired.
        uint40 retiredAt;
        /// @notice Why it was retired, `None` if not retired.
        RetireReason retireReason;
    }

    /**
     * @notice An image as one leaf of a batch, with the RFC 6962 inclusion proof that puts it
     * there: its leaf is sha256(0x00 ‖ recordKey ‖ patientKey ‖ digest ‖ pixelDigest).
     */
    struct BatchedLeaf {
        /// @notice The leaf's patient key.
        bytes32 patientKey;
        /// @notice The leaf's dataset digest.
        bytes32 digest;
        /// @notice The leaf's Pixel Data digest.
        bytes32 pixelDigest;
        /// @notice The batch that anchored the leaf.
        uint256 batchId;
        /// @notice The leaf's position in the batch.
        uint256 index;
        /// @notice The audit path from the leaf to the batch's root.
        bytes32[] proof;
    }

    /// @notice A new version of an image, as written by {supersedeBatchedImage}.
    struct NewVersion {
        /// @notice HMAC of the patient's issuer and ID.
        bytes32 patientKey;
        /// @notice SHA-256 of the new dataset bytes.
        bytes32 digest;
        /// @notice SHA-256 of the new Pixel Data value.
        bytes32 pixelDigest;
        /// @notice Examined body part.
        string bodyPart;
        /// @notice DICOM Modality.
        string modality;
    }

    /// @notice A Merkle root anchoring many images in one transaction.
    struct Batch {
        /// @notice RFC 6962 Merkle tree head over the images' leaves.
        bytes32 root;
        /// @notice Number of leaves in the tree.
        uint32 count;
        /// @notice Account that anchored the batch.
        address recorder;
        /// @notice Block timestamp of the anchoring (32 bits: until 2106).
        uint32 anchoredAt;
        /// @notice Block number of the anchoring (32 bits: 4.2e9 blocks, 136 years at one a second).
        /// @dev count, recorder, anchoredAt and blockNumber share one storage slot: a batch
        /// costs two new slots, not three.
        uint32 blockNumber;
    }

    /// @notice The caller may not write records: it does not hold the Recorder role.
    error XrayNotRecorder(address account);
    /// @notice `account` may not change `recordKey`: it is neither its owner `owner` nor the admin.
    error XrayNotOwner(bytes32 recordKey, address account, address owner);
    /// @notice The caller may not give or take `userType` permissions.
    error XrayNotPermissionManager(address account, UserType userType);
    /// @notice A Hospital may not give or take permissions of its own.
    error XraySelfManagement(address account);
    /// @notice A Hospital may not make a Doctor of `account`: it holds another role.
    error XrayHoldsOtherRole(address account);
    /// @notice Doctor `account` was not added by Hospital `hospital`, which therefore may not
    /// rename, revoke or remove it.
    error XrayNotOwnDoctor(address account, address hospital);
    /// @notice A retirement needs a reason other than `None`.
    error XrayInvalidReason();
    /// @notice `userType` is not a permission that can be given.
    error XrayInvalidUserType(UserType userType);
    /// @notice `account` holds no permission to remove.
    error XrayNoPermission(address account);
    /// @notice A key, digest or root was zero.
    error XrayZeroValue();
    /// @notice `recordKey` is already recorded; a new version goes through {supersedeImage}.
    error XrayRecordExists(bytes32 recordKey);
    /// @notice `recordKey` was never recorded.
    error XrayUnknownRecord(bytes32 recordKey);
    /// @notice `recordKey` is retired and can no longer change.
    error XrayRecordRetired(bytes32 recordKey);
    /// @notice The new version has the digest the current version already has.
    error XrayUnchangedDigest(bytes32 recordKey, bytes32 digest);
    /// @notice `version` does not exist for `recordKey`.
    error XrayUnknownVersion(bytes32 recordKey, uint256 version);
    /// @notice A batch must anchor at least one image.
    error XrayEmptyBatch();
    /// @notice `root` is already anchored, as batch `batchId`.
    error XrayBatchExists(bytes32 root, uint256 batchId);
    /// @notice No batch has id `batchId`.
    error XrayUnknownBatch(uint256 batchId);
    /// @notice Batch `batchId` anchors access-trail entries, not images: it proves no image.
    error XrayNotImageBatch(uint256 batchId);
    /// @notice The inclusion proof does not put `recordKey`'s leaf in batch `batchId`.
    error XrayNotInBatch(bytes32 recordKey, uint256 batchId);
    /// @notice `index` is past the `count` images recorded for `patientKey`.
    error XrayIndexOutOfRange(bytes32 patientKey, uint256 index, uint256 count);

    /// @notice `account` was given (`enabled`) or denied the `userType` permission, under `name`.
    event PermissionSet(
        address indexed account, string name, UserType userType, bool enabled, address indexed by
    );
    /// @notice Every xray permission of `account` was removed by `by`.
    event PermissionRemoved(address indexed account, address indexed by);
    /// @notice The first version of an image was recorded.
    event ImageRecorded(
        bytes32 indexed recordKey,
        bytes32 indexed patientKey,
        address indexed recorder,
        bytes32 digest,
        bytes32 pixelDigest,
        string bodyPart,
        string modality
    );
    /// @notice A new version of an image replaced `previousDigest`.
    event ImageSuperseded(
        bytes32 indexed recordKey,
        bytes32 indexed patientKey,
        address indexed recorder,
        uint32 version,
        bytes32 previousDigest,
        bytes32 digest,
        bytes32 pixelDigest
    );
    /// @notice A Merkle root of `count` images was anchored as batch `batchId`.
    event BatchAnchored(uint256 indexed batchId, bytes32 indexed root, address indexed recorder, uint32 count);
    /// @notice A Merkle root of `count` access-trail entries was anchored as batch `batchId`
    /// (the same id sequence as {BatchAnchored}; image feeds need not read this event).
    event AccessBatchAnchored(
        uint256 indexed batchId, bytes32 indexed root, address indexed recorder, uint32 count
    );
    /// @notice An image was retired by `by` (its owner or the admin); its record stays.
    event ImageRetired(bytes32 indexed recordKey, address indexed by, RetireReason reason);
    /// @notice The batch recorder `to` proved it anchored `recordKey` before `from` wrote or
    /// claimed it: `to` owns the key again, and a retirement by `from` is void.
    event OwnershipRestored(bytes32 indexed recordKey, address indexed from, address indexed to);

    /**
     * @notice Give or deny `account` the `userType` permission (seed parity).
     * @dev The admin manages every type. A Hospital manages Doctors only: never itself, never
     * an account holding another role, and only the doctors it added itself (naming one is
     * renaming it).
     */
    function setPermission(address account, string calldata name, UserType userType, bool enabled) external;

    /// @notice Remove every xray permission of `account` (seed parity: a doctor who resigned).
    /// @dev The admin removes anyone; a Hospital only a Doctor it added itself.
    function removePermission(address account) external;

    /// @notice Record the first version of an image; the caller (a Recorder) becomes its owner.
    function recordImage(
        bytes32 recordKey,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        string calldata bodyPart,
        string calldata modality
    ) external;

    /// @notice Record a new version of an image; it links to the current one. Only the
    /// image's owner (still a Recorder) or the admin.
    function supersedeImage(
        bytes32 recordKey,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        string calldata bodyPart,
        string calldata modality
    ) external;

    /**
     * @notice Record a new version of an image first anchored in a batch: `leaf` proves the
     * batched anchoring. Only the batch's recorder (still a Recorder) or the admin.
     * @dev A key the contract does not know yet becomes owned by the batch's recorder, and
     * `version` is its first stored version. A key another account wrote directly in or
     * after the batch's block, or claimed through a later batch (a squatter), returns to
     * the batch's recorder ({OwnershipRestored}), and a retirement by the squatter is
     * cleared; a key written directly before the batch keeps its owner.
     */
    function supersedeBatchedImage(bytes32 recordKey, BatchedLeaf calldata leaf, NewVersion calldata version)
        external;

    /// @notice Anchor the Merkle root of `count` images; returns the batch id. Recorders only.
    function recordBatch(bytes32 root, uint32 count) external returns (uint256 batchId);

    /// @notice Anchor the Merkle root of `count` access-trail entries as a batch of kind
    /// `Access`; returns the batch id (the next of the one sequence). Recorders only.
    function recordAccessBatch(bytes32 root, uint32 count) external returns (uint256 batchId);

    /// @notice Retire an image (the seed's Remove); the record stays, marked. Only the image's
    /// owner (still a Recorder) or the admin.
    function retireImage(bytes32 recordKey, RetireReason reason) external;

    /**
     * @notice Retire an image first anchored in a batch, shown by `leaf`; the batch stays.
     * Only the batch's recorder (still a Recorder) or the admin; ownership as in
     * {supersedeBatchedImage}.
     */
    function retireBatchedImage(bytes32 recordKey, BatchedLeaf calldata leaf, RetireReason reason) external;

    /// @notice The account that owns `recordKey`: the Recorder that first wrote it with
    /// {recordImage}, or the recorder of the batch whose proof was shown; zero if unknown.
    function ownerOf(bytes32 recordKey) external view returns (address);

    /// @notice The image recorded under `recordKey`.
    function imageOf(bytes32 recordKey) external view returns (Image memory);

    /// @notice Version `version` (1-based) of the image under `recordKey`.
    function versionOf(bytes32 recordKey, uint256 version) external view returns (ImageVersion memory);

    /// @notice The batch with id `batchId`.
    function batchOf(uint256 batchId) external view returns (Batch memory);

    /// @notice What batch `batchId` anchors: images or access-trail entries.
    function batchKindOf(uint256 batchId) external view returns (BatchKind);

    /// @notice The id of the batch that anchored `root`, zero if none.
    function batchIdOf(bytes32 root) external view returns (uint256);

    /// @notice Number of batches anchored so far; ids run from 1 to this.
    function batchCount() external view returns (uint256);

    /// @notice The name given to `account` with {setPermission}.
    function nameOf(address account) external view returns (string memory);

    /// @notice Number of image versions recorded for `patientKey` (seed parity).
    function getXrayhashCount(bytes32 patientKey) external view returns (uint256);

    /// @notice The `index`-th image version of `patientKey`: recorder's name, body part, digest (seed parity).
    function getXrayhash(bytes32 patientKey, uint256 index)
        external
        view
        returns (string memory recorderName, string memory bodyPart, bytes32 digest);

    // -- grants (issue #16): read access to one study or all of a patient's, until an expiry --

    /**
     * @notice A grant of read access, as returned by {grantOf}. Only pseudonymous keys:
     * the grantee is an account (its address, left-padded) or the keyed hash of a token
     * holder's name, never the name.
     */
    struct AccessGrant {
        /// @notice Who may read: a padded address, or HMAC of the token grantee's name.
        bytes32 grantee;
        /// @notice HMAC of the patient's issuer and ID.
        bytes32 patientKey;
        /// @notice HMAC of the Study Instance UID; zero: every study of the patient.
        bytes32 studyKey;
        /// @notice Account that granted.
        address granter;
        /// @notice Block timestamp after which the grant no longer holds.
        uint40 expiresAt;
        /// @notice Block timestamp of the grant.
        uint40 grantedAt;
        /// @notice Account that revoked it, zero while it stands.
        address revokedBy;
        /// @notice When it was revoked, zero while it stands.
        uint40 revokedAt;
    }

    /// @notice The caller may not grant or revoke: not the admin, a Hospital, a Doctor or a
    /// Recorder (granting), nor the granter or the admin (revoking).
    error XrayNotGranter(address account);
    /// @notice The expiry is not in the future.
    error XrayGrantExpiry(uint40 expiresAt);
    /// @notice No grant has id `grantId`.
    error XrayUnknownGrant(uint256 grantId);
    /// @notice Grant `grantId` is already revoked.
    error XrayGrantRevoked(uint256 grantId);

    /// @notice Read access to `studyKey` (zero: every study of `patientKey`) for `grantee`
    /// until `expiresAt`, given by `granter`.
    event AccessGranted(
        uint256 indexed grantId,
        bytes32 indexed grantee,
        bytes32 indexed patientKey,
        bytes32 studyKey,
        uint40 expiresAt,
        address granter
    );
    /// @notice Grant `grantId` revoked by `by`.
    event AccessRevoked(uint256 indexed grantId, address indexed by);

    /**
     * @notice Grant `grantee` read access to study `studyKey` of patient `patientKey` (all
     * of the patient's studies when `studyKey` is zero) until `expiresAt`. Only the admin,
     * a Hospital, a Doctor or a Recorder (the gateway writing the grants its API makes).
     * @return grantId The grant's id, from 1.
     */
    function grantAccess(bytes32 grantee, bytes32 patientKey, bytes32 studyKey, uint40 expiresAt)
        external
        returns (uint256 grantId);

    /// @notice Revoke grant `grantId` now; only its granter or the admin.
    function revokeAccess(uint256 grantId) external;

    /// @notice Grant `grantId`.
    function grantOf(uint256 grantId) external view returns (AccessGrant memory);

    /// @notice The ids of the grants on `key`: a patient key lists every grant of that
    /// patient (study grants too), a study key the grants of that study.
    function grantsOf(bytes32 key) external view returns (uint256[] memory);

    /// @notice Number of grants made so far; ids run from 1 to this.
    function grantCount() external view returns (uint256);
}
