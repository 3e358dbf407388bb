// kvlink's footprint on the watched vaults, applied by the postdeploy hook (scripts/postdeploy.*) after
// `azd deploy`, and removed by the predown hook (scripts/predown.*). Kept out of main.bicep so that
// `azd down` never treats a vault's resource group as its own (see the note at the top of main.bicep).
//
// Per vault, in the vault's resource group (any subscription of the tenant):
// - core/keyvault/vault-access.bicep: access policy "list" on secrets, or Key Vault Reader on RBAC vaults
//   (unless the identity already holds it there), and the AuditEvent diagnostic setting to kvlink's Event Hub;
// - core/eventgrid/system-topic.bicep: the vault's Event Grid system topic (created, or the vault's existing
//   one reused: a vault may have only one) and the subscription that delivers SecretNewVersionCreated /
//   SecretNearExpiry / SecretExpired to on_secret_event. It needs the deployed function, which is why this
//   runs after deploy, the way Microsoft's templates create their Event Grid subscriptions.
// Every name here carries the environment's resource token (main.bicep's AZURE_RESOURCE_TOKEN): two
// environments (production and staging) on one vault each get their own diagnostic setting, subscription
// and deployments, and each `azd down` removes only its own.
// Everything is a PUT of a named resource, so running it again changes nothing.
targetScope = 'subscription'

@minLength(1)
param environmentName string

@minLength(13)
@maxLength(13)
@description('main.bicep\'s resourceToken (azd: AZURE_RESOURCE_TOKEN): uniqueString(subscription, environment, location).')
param resourceToken string

@description('The watched vaults, as the hook found them: [{ id: <vault resource id>, rbac: <properties.enableRbacAuthorization>, grantReader: <false when the identity already holds Key Vault Reader on the vault>, topicName: <the vault\'s existing system topic, or empty to create one>, topicResourceGroup: <its resource group, or empty> }]. ARM cannot branch on a reference() in a condition, so the hook reads these.')
param vaults array

@description('Resource id of kvlink\'s function app.')
param functionAppId string
@description('Principal id of kvlink\'s user-assigned identity.')
param functionPrincipalId string
@description('Resource id of the identity Event Grid dead-letters with.')
param eventGridIdentityId string

param eventHubAuthorizationRuleId string
param eventHubName string

param deadLetterStorageAccountId string
param deadLetterContainerName string

var abbrs = loadJsonContent('abbreviations.json')
var tags = {
  'azd-env-name': environmentName
}
// One name for this environment's diagnostic setting and event subscription on every vault.
var footprintName = 'kvlink-${resourceToken}'

module vaultAccess 'core/keyvault/vault-access.bicep' = [for vault in vaults: {
  name: 'kvlink-access-${resourceToken}-${uniqueString(vault.id)}'
  scope: resourceGroup(split(vault.id, '/')[2], split(vault.id, '/')[4])
  params: {
    vaultName: last(split(vault.id, '/'))
    rbac: vault.rbac
    grantReader: vault.grantReader
    principalId: functionPrincipalId
    tenantId: tenant().tenantId
    resourceToken: resourceToken
    diagnosticSettingName: footprintName
    eventHubAuthorizationRuleId: eventHubAuthorizationRuleId
    eventHubName: eventHubName
  }
}]

module vaultEvents 'core/eventgrid/system-topic.bicep' = [for (vault, i) in vaults: {
  name: 'kvlink-events-${resourceToken}-${uniqueString(vault.id)}'
  // An existing topic may live in another resource group of the vault's subscription.
  scope: resourceGroup(split(vault.id, '/')[2], empty(vault.topicResourceGroup) ? split(vault.id, '/')[4] : vault.topicResourceGroup)
  params: {
    name: empty(vault.topicName) ? '${abbrs.eventGridSystemTopics}kvlink-${resourceToken}-${toLower(last(split(vault.id, '/')))}' : vault.topicName
    createTopic: empty(vault.topicName)
    location: vaultAccess[i].outputs.location
    tags: tags
    resourceToken: resourceToken
    vaultId: vault.id
    deliveryIdentityId: eventGridIdentityId
    subscriptionName: footprintName
    functionResourceId: '${functionAppId}/functions/on_secret_event'
    deadLetterStorageAccountId: deadLetterStorageAccountId
    deadLetterContainerName: deadLetterContainerName
  }
}]

output SYSTEM_TOPIC_IDS array = [for (vault, i) in vaults: vaultEvents[i].outputs.id]
